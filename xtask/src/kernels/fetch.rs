//! Debian kernels for the matrix, fetched with the ordinary apt client under a private
//! configuration (its own sources, lists and cache under `target/kernels/apt`), so the
//! machine's own package lists are never touched.
//!
//! The mirror is the one the machine already uses: found at run time in its apt sources
//! (the entry that serves its own Debian release), with only the suite name swapped. Only
//! `boot/vmlinuz-*` and `boot/config-*` are kept from the package: the `-cloud` flavour has
//! everything the guest needs built in (BTF, syscall tracepoints, BPF events, the serial
//! console, initramfs), so no module is loaded and no 9p share is needed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::progress::{output, run_logged};

/// One kernel of the matrix: the Debian suite whose `linux-image-cloud-amd64` provides it.
#[derive(Debug)]
pub struct Kernel {
    /// What `--kernel` takes and what result lines say: the upstream series.
    pub label: &'static str,
    pub suite: &'static str,
    /// Which distributions ship this series, for the README and the result line.
    pub shipped_by: &'static str,
}

/// The matrix run by `cargo xtask test`. The machine's own kernel (6.18) is the one the
/// rest of the suite runs on.
pub const KERNELS: [Kernel; 3] = [
    Kernel { label: "5.10", suite: "bullseye", shipped_by: "Debian 11" },
    Kernel { label: "6.1", suite: "bookworm", shipped_by: "Debian 12" },
    Kernel { label: "6.12", suite: "trixie", shipped_by: "Debian 13" },
];

/// Not in the CI matrix: Debian's newest backported kernel, which moves with every
/// backports upload (a look ahead, asked for with `--kernel backports`).
pub const BACKPORTS: Kernel =
    Kernel { label: "backports", suite: "trixie-backports", shipped_by: "Debian 13 backports" };

/// A kernel ready to boot.
pub struct Cached {
    pub vmlinuz: PathBuf,
    /// The package's kernel release, e.g. `6.1.0-50-cloud-amd64`.
    pub release: String,
}

/// An apt source: where the machine's Debian packages come from.
#[derive(Debug, PartialEq)]
pub struct Mirror {
    pub uri: String,
    /// The keyring the machine's entry names (`Signed-By`), when it is a file.
    pub signed_by: Option<String>,
}

pub fn cache_dir(root: &Path, label: &str) -> PathBuf {
    root.join("target/kernels").join(label)
}

/// The cached kernel, if `fetch` already ran for it.
pub fn cached(root: &Path, label: &str) -> Option<Cached> {
    let dir = cache_dir(root, label);
    let release = std::fs::read_to_string(dir.join("release")).ok()?.trim().to_string();
    let vmlinuz = dir.join("vmlinuz");
    (vmlinuz.is_file() && !release.is_empty()).then_some(Cached { vmlinuz, release })
}

/// The machine's Debian mirror, from its apt sources.
pub fn system_mirror() -> Result<Mirror> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release has no VERSION_CODENAME: the kernel matrix needs a Debian machine")?;
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let found = if file.extension().is_some_and(|e| e == "sources") {
            mirror_in_deb822(&text, &codename)
        } else {
            mirror_in_one_line(&text, &codename)
        };
        if let Some(m) = found {
            return Ok(m);
        }
    }
    bail!(
        "no apt source of this machine serves Debian {codename} (main): the kernel matrix fetches \
         Debian's kernels from the same mirror (see /etc/apt/sources.list and sources.list.d)"
    )
}

/// `deb [signed-by=/k.gpg arch=amd64] URI SUITE COMPONENT...` lines.
pub fn mirror_in_one_line(text: &str, codename: &str) -> Option<Mirror> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ").or_else(|| line.strip_prefix("deb\t")) else { continue };
        let rest = rest.trim_start();
        let (options, rest) = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']')?,
            None => ("", rest),
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else { continue };
        if suite == codename && words.any(|c| c == "main") {
            let signed_by = options
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .filter(|k| k.starts_with('/'))
                .map(str::to_string);
            return Some(Mirror { uri: uri.to_string(), signed_by });
        }
    }
    None
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Components:`, `Signed-By:`).
pub fn mirror_in_deb822(text: &str, codename: &str) -> Option<Mirror> {
    let mut stanza: Vec<(String, String)> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let Some(m) = stanza_mirror(&stanza, codename) {
                return Some(m);
            }
            stanza.clear();
        } else if line.starts_with('#') || line.starts_with(' ') || line.starts_with('\t') {
            // Comments, and continuation lines (an inline key block): nothing we use.
        } else if let Some((k, v)) = line.split_once(':') {
            stanza.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    None
}

fn stanza_mirror(stanza: &[(String, String)], codename: &str) -> Option<Mirror> {
    let field = |name: &str| stanza.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let has = |name: &str, word: &str| field(name).is_some_and(|v| v.split_whitespace().any(|w| w == word));
    if field("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no"))
        || !has("types", "deb")
        || !has("suites", codename)
        || !has("components", "main")
    {
        return None;
    }
    let uri = field("uris")?.split_whitespace().next()?.to_string();
    let signed_by = field("signed-by").filter(|k| k.starts_with('/')).map(str::to_string);
    Some(Mirror { uri, signed_by })
}

/// The private apt: `apt-get`/`apt-cache` with their own sources, lists and cache.
struct PrivateApt {
    dir: PathBuf,
    log: PathBuf,
}

impl PrivateApt {
    fn new(root: &Path, mirror: &Mirror, suites: &[&str]) -> Result<PrivateApt> {
        let dir = root.join("target/kernels/apt");
        for sub in ["sources.list.d", "lists/partial", "cache/archives/partial", "debs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let options = mirror.signed_by.as_ref().map(|k| format!("[signed-by={k}] ")).unwrap_or_default();
        let sources: String = suites.iter().map(|s| format!("deb {options}{} {s} main\n", mirror.uri)).collect();
        std::fs::write(dir.join("sources.list"), sources)?;
        Ok(PrivateApt { log: dir.join("apt.log"), dir })
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        for (key, value) in [
            ("Dir::Etc::SourceList", d("sources.list")),
            ("Dir::Etc::SourceParts", d("sources.list.d")),
            ("Dir::State::Lists", d("lists")),
            ("Dir::Cache", d("cache")),
            // target/ is not readable by apt's unprivileged download user.
            ("APT::Sandbox::User", "root".to_string()),
            ("Acquire::Languages", "none".to_string()),
        ] {
            c.arg("-o").arg(format!("{key}={value}"));
        }
        c
    }

    fn update(&self) -> Result<()> {
        run_logged(self.command("apt-get").args(["update", "-q"]), &self.log)
    }

    /// `linux-image-<release>-cloud-amd64`, the package the suite's meta-package depends on.
    fn image_package(&self, suite: &str) -> Result<String> {
        let text = output(self.command("apt-cache").args(["depends", &format!("linux-image-cloud-amd64/{suite}")]))
            .with_context(|| format!("apt-cache found no linux-image-cloud-amd64 in {suite}"))?;
        image_dependency(&text)
            .with_context(|| format!("linux-image-cloud-amd64/{suite} names no kernel image:\n{text}"))
    }

    fn download(&self, package: &str, suite: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        run_logged(
            self.command("apt-get").args(["download", "-q", &format!("{package}/{suite}")]).current_dir(&debs),
            &self.log,
        )?;
        let prefix = format!("{package}_");
        std::fs::read_dir(&debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download {package} left no .deb in {}", debs.display()))
    }
}

/// The `Depends: linux-image-…` line of `apt-cache depends linux-image-cloud-amd64`.
pub fn image_dependency(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|p| p.trim().trim_matches(|c| c == '<' || c == '>'))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(str::to_string)
}

/// Fetches the kernels not cached yet (one `apt-get update` for all of them).
pub fn fetch(root: &Path, kernels: &[&Kernel]) -> Result<Vec<String>> {
    let missing: Vec<&&Kernel> = kernels.iter().filter(|k| cached(root, k.label).is_none()).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let mirror = system_mirror()?;
    let suites: Vec<&str> = missing.iter().map(|k| k.suite).collect();
    let apt = PrivateApt::new(root, &mirror, &suites)?;
    apt.update().context("apt-get update of the private kernel sources")?;
    let mut fetched = Vec::new();
    for k in missing {
        let package = apt.image_package(k.suite)?;
        let release = package.trim_start_matches("linux-image-").to_string();
        let dir = cache_dir(root, k.label);
        let unpack = dir.join("unpack");
        let _ = std::fs::remove_dir_all(&unpack);
        std::fs::create_dir_all(&unpack)?;
        unpack_deb(&apt.download(&package, k.suite)?, &unpack)?;
        // Newer packaging (7.x backports) splits the image: the kernel in linux-binary-*,
        // its config in linux-base-*; linux-image-* only depends on them.
        if find_boot_file(&unpack, &release, "vmlinuz").is_none() {
            for part in ["linux-binary", "linux-base"] {
                unpack_deb(&apt.download(&format!("{part}-{release}"), k.suite)?, &unpack)?;
            }
        }
        keep_boot_files(&unpack, &dir, &release).with_context(|| format!("{package} from {}", k.suite))?;
        std::fs::remove_dir_all(&unpack)?;
        fetched.push(package);
    }
    Ok(fetched)
}

/// `dpkg-deb -x`, then the .deb goes (the cache keeps only what is booted).
fn unpack_deb(deb: &Path, into: &Path) -> Result<()> {
    let status = Command::new("dpkg-deb").arg("-x").arg(deb).arg(into).status().context("cannot run dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed with {status}", deb.display());
    }
    std::fs::remove_file(deb)?;
    Ok(())
}

/// `boot/<name>-<release>` (Debian up to 13) or `usr/lib/modules/<release>/<name>` (later).
fn find_boot_file(unpacked: &Path, release: &str, name: &str) -> Option<PathBuf> {
    [unpacked.join(format!("boot/{name}-{release}")), unpacked.join(format!("usr/lib/modules/{release}/{name}"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// Keeps the kernel and its config as `vmlinuz` and `config`, and the release in `release`
/// (written last: it marks the cache complete).
fn keep_boot_files(unpacked: &Path, dir: &Path, release: &str) -> Result<()> {
    for name in ["vmlinuz", "config"] {
        let found = find_boot_file(unpacked, release, name)
            .with_context(|| format!("no {name} for {release} in the downloaded packages"))?;
        std::fs::rename(found, dir.join(name))?;
    }
    std::fs::write(dir.join("release"), format!("{release}\n"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_sources() {
        let text = "# comment\ndeb-src http://m.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://m.example/debian bookworm main contrib\n";
        let m = mirror_in_one_line(text, "bookworm").unwrap();
        assert_eq!(m.uri, "http://m.example/debian");
        assert_eq!(m.signed_by.as_deref(), Some("/usr/share/keyrings/k.gpg"));
        // The security archive serves "bookworm-security", not the release itself.
        assert_eq!(
            mirror_in_one_line("deb http://s.example/debian-security bookworm-security main\n", "bookworm"),
            None
        );
        assert_eq!(mirror_in_one_line("deb http://m.example/debian bookworm contrib\n", "bookworm"), None);
    }

    #[test]
    fn deb822_sources() {
        let text =
            "Types: deb\nURIs: http://s.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
                    Types: deb deb-src\n# a comment\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
        let m = mirror_in_deb822(text, "bookworm").unwrap();
        assert_eq!(m.uri, "http://m.example/debian");
        assert_eq!(m.signed_by.as_deref(), Some("/usr/share/keyrings/debian-archive-keyring.gpg"));
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://m.example/debian\nSuites: bookworm\nComponents: main\n";
        assert_eq!(mirror_in_deb822(disabled, "bookworm"), None);
        // An inline key block is not a file: apt's default keyrings apply.
        let inline = "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm\nComponents: main\n\
                      Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n";
        assert_eq!(mirror_in_deb822(inline, "bookworm").unwrap().signed_by, None);
    }

    #[test]
    fn image_package_from_depends() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-base-cloud-amd64\n  \
                    Depends: linux-image-6.12.117+deb13-cloud-amd64\n  Depends: linux-modules-cloud-amd64\n";
        assert_eq!(image_dependency(text).as_deref(), Some("linux-image-6.12.117+deb13-cloud-amd64"));
        assert_eq!(image_dependency("linux-image-cloud-amd64\n"), None);
    }
}

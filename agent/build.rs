//! Builds the kernel programs (ebpf/programs) for the bpf target with aya-build and puts
//! the object in OUT_DIR, where `loader` embeds it. This is the only way the object is
//! built for the agent; `cargo xtask build-ebpf` runs the same build to inspect it.
fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let root_dir = format!("{manifest_dir}/../ebpf/programs");
    let common_dir = format!("{manifest_dir}/../ebpf/common");
    println!("cargo:rerun-if-changed={common_dir}");
    let package = aya_build::Package { name: "hoptrace-ebpf", root_dir: &root_dir, ..Default::default() };
    // AYA_BUILD_SKIP=1 (unit-test loops that never load programs): aya-build skips the
    // kernel build; leave an empty object so the agent still compiles. The loader refuses
    // an empty object with a clear message.
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("hoptrace");
        if !out.exists() {
            std::fs::write(&out, []).expect("writing placeholder eBPF object");
        }
    }
    if let Err(err) = aya_build::build_ebpf([package], aya_build::Toolchain::default()) {
        panic!(
            "building the eBPF programs failed: {err:#}\n\
             The kernel side needs: rustup nightly with rust-src, and bpf-linker built against LLVM 22.\n\
             Run `cargo xtask setup` (installs them), then build again."
        );
    }
}

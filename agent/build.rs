//! Builds the kernel programs (ebpf/programs) for the bpf target with aya-build and puts
//! the object in OUT_DIR, where `loader` embeds it. This is the only way the object is
//! built for the agent; `cargo xtask build-ebpf` runs the same build to inspect it.
fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let root_dir = format!("{manifest_dir}/../ebpf/programs");
    let common_dir = format!("{manifest_dir}/../ebpf/common");
    println!("cargo:rerun-if-changed={common_dir}");
    let package = aya_build::Package {
        name: "hoptrace-ebpf",
        root_dir: &root_dir,
        ..Default::default()
    };
    if let Err(err) = aya_build::build_ebpf([package], aya_build::Toolchain::default()) {
        panic!(
            "building the eBPF programs failed: {err:#}\n\
             The kernel side needs: rustup nightly with rust-src, and bpf-linker built against LLVM 22.\n\
             Run `cargo xtask setup` (installs them), then build again."
        );
    }
}

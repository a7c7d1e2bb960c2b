//! Soname and symbol versions of Debian's libcfg.so.7 (see cfg.map).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it");
    println!("cargo:rerun-if-changed=cfg.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcfg.so.7");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/cfg.map");
}

//! Soname and symbol versions of Debian's libcpg.so.4 (see cpg.map).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it");
    println!("cargo:rerun-if-changed=cpg.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcpg.so.4");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/cpg.map");
}

//! Compiles the ISA-L inflate shim (`csrc/isal_inflate.c`) when ISA-L's headers are installed
//! (Debian: libisal-dev). Without them haul inflates gzip with zlib-rs; the library itself is
//! looked up at run time either way (see the shim).

fn main() {
    println!("cargo:rustc-check-cfg=cfg(haul_isal)");
    println!("cargo:rerun-if-changed=csrc/isal_inflate.c");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let header = "/usr/include/isa-l/igzip_lib.h";
    if std::path::Path::new(header).exists() {
        println!("cargo:rerun-if-changed={header}");
    }
    match cc::Build::new()
        .file("csrc/isal_inflate.c")
        .warnings(true)
        .extra_warnings(true)
        .try_compile("haul_isal_inflate")
    {
        Ok(()) => println!("cargo:rustc-cfg=haul_isal"),
        Err(e) => println!(
            "cargo:warning=ISA-L's headers (isa-l/igzip_lib.h; Debian: libisal-dev) could not be used, \
             so gzip layers will inflate with zlib-rs: {e}"
        ),
    }
}

//! Lays out the release binary's request path: its hottest functions go
//! first in `.text`, in the order `link/hot-symbols.txt` lists them
//! (written from a profile by `bench/hot-symbols.sh`). Together they fit in
//! fewer instruction-cache lines and pages than where the compiler scatters
//! them (docs/benchmarks.md, "Hot functions placed together").
//!
//! Only where the linker is rustc's default on x86_64 Linux, rust-lld: GNU
//! ld has no `--symbol-ordering-file`. A configured linker, or
//! `PORTCULLIS_SYMBOL_ORDER=off`, builds without it. Names the binary does
//! not have are skipped by the linker, so a stale file costs speed, never
//! a build.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=link/hot-symbols.txt");
    println!("cargo:rerun-if-env-changed=PORTCULLIS_SYMBOL_ORDER");
    if env::var("PROFILE").as_deref() != Ok("release")
        || env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var("PORTCULLIS_SYMBOL_ORDER").as_deref() == Ok("off")
        || linker_configured()
    {
        return;
    }
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("link/hot-symbols.txt");
    if !order.is_file() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=portcullis=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=portcullis=-Wl,--no-warn-symbol-ordering");
}

/// Whether the build chose its own linker (`target.<triple>.linker`, or
/// `-C linker`, `-C link-self-contained`, `-fuse-ld` in the rustflags).
fn linker_configured() -> bool {
    if env::var_os("RUSTC_LINKER").is_some() {
        return true;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    ["linker", "link-self-contained", "fuse-ld"]
        .iter()
        .any(|flag| flags.contains(flag))
}

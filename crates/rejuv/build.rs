//! Links `rejuv-agent` with its code in the order it runs, when asked.
//!
//! With `REJUV_AGENT_SYMBOL_ORDER=FILE` (set by `scripts/build-agent.sh`), the linker (LLD, Rust's
//! default on x86_64 Linux) places the functions named in FILE, one mangled symbol per line,
//! first and together in `rejuv-agent`'s code. They are the functions an idle agent runs (its
//! start and its steady loop, recorded by `scripts/build-agent.sh --record-order`); the kernel
//! maps code in 64 KB runs around each page fault, so code that runs kept among code that does
//! not leaves fewer pages resident. A name the binary no longer has is skipped.

fn main() {
    println!("cargo:rerun-if-env-changed=REJUV_AGENT_SYMBOL_ORDER");
    let Some(file) = std::env::var_os("REJUV_AGENT_SYMBOL_ORDER").filter(|f| !f.is_empty()) else {
        return;
    };
    let file = std::path::PathBuf::from(file);
    let file = std::fs::canonicalize(&file).unwrap_or_else(|e| {
        panic!("REJUV_AGENT_SYMBOL_ORDER={}: {e}", file.display());
    });
    println!("cargo:rerun-if-changed={}", file.display());
    println!(
        "cargo:rustc-link-arg-bin=rejuv-agent=-Wl,--symbol-ordering-file={}",
        file.display()
    );
    println!("cargo:rustc-link-arg-bin=rejuv-agent=-Wl,--no-warn-symbol-ordering");
}

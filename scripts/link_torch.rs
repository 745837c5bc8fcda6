//! Build script shared by every crate whose binaries or tests link libtorch.
//!
//! * `--no-as-needed` + `-ltorch_cuda`: the linker otherwise drops
//!   libtorch_cuda.so (nothing references it by symbol) and CUDA is never seen.
//! * an rpath to torch's lib directory, so binaries run without LD_LIBRARY_PATH.
//!
//! The directory comes from `LIBTORCH` or from the `torch` package of the
//! `python3` on PATH (the project's .venv, as scripts/setup.sh arranges).
use std::path::PathBuf;
use std::process::Command;

fn torch_lib_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out =
        Command::new(python).args(["-c", "import os, torch; print(os.path.dirname(torch.__file__))"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()).join("lib"))
}

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=PYTHON");
    let Some(lib) = torch_lib_dir() else {
        println!("cargo:warning=torch not found: run scripts/setup.sh (binaries will need LD_LIBRARY_PATH)");
        return;
    };
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}

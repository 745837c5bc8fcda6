//! Builds csrc/shim.cpp against the headers of the libtorch that tch links
//! (the project venv's `torch` package, or `LIBTORCH`), the way torch-sys
//! builds its own C++: C++17, the new libstdc++ ABI the wheel is built with.
use std::path::PathBuf;
use std::process::Command;

fn torch_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(dir));
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out =
        Command::new(python).args(["-c", "import os, torch; print(os.path.dirname(torch.__file__))"]).output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn main() {
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=PYTHON");
    let Some(torch) = torch_dir() else {
        panic!("libtorch not found: run scripts/setup.sh (it installs torch into .venv), or set LIBTORCH");
    };
    let include = torch.join("include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("inception_torch_ext");
    let lib = torch.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    // This crate's own tests run without LD_LIBRARY_PATH too.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

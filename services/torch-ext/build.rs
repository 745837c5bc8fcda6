//! Builds csrc/shim.cpp (autocast) and csrc/distributed.cpp (c10d: TCPStore,
//! ProcessGroupGloo) against the headers of the libtorch that tch links (the
//! project venv's `torch` package, or `LIBTORCH`), the way torch-sys builds
//! its own C++: C++17, the new libstdc++ ABI the wheel is built with.
//! Gloo's headers, which the wheel lacks, come from Debian's libgloo-dev.
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where libgloo-dev puts Gloo's headers (checked before compiling).
const GLOO_CONFIG_HEADER: &str = "/usr/include/gloo/config.h";

fn torch_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(dir));
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out =
        Command::new(python).args(["-c", "import os, torch; print(os.path.dirname(torch.__file__))"]).output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn require_gloo_headers() {
    if !Path::new(GLOO_CONFIG_HEADER).exists() {
        panic!(
            "Gloo's headers are missing ({GLOO_CONFIG_HEADER}): the c10d shim (csrc/distributed.cpp) needs \
             Debian's libgloo-dev; run scripts/setup.sh (it installs the pinned libgloo-dev), or \
             apt-get install libgloo-dev=0.0~git20220518.5b14351-3"
        );
    }
}

fn main() {
    for file in ["csrc/shim.cpp", "csrc/distributed.cpp", "csrc/message.hpp"] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-changed={GLOO_CONFIG_HEADER}");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=PYTHON");
    let Some(torch) = torch_dir() else {
        panic!("libtorch not found: run scripts/setup.sh (it installs torch into .venv), or set LIBTORCH");
    };
    require_gloo_headers();
    let include = torch.join("include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/shim.cpp")
        .file("csrc/distributed.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        // Without it ProcessGroupGloo.hpp declares nothing.
        .define("USE_C10D_GLOO", None)
        .warnings(false)
        .compile("inception_torch_ext");
    let lib = torch.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    // After the shim's archive on the link line, so `--as-needed` keeps both:
    // the shim references them by symbol (checked with readelf on the tests).
    // Only a library nothing names needs `--no-as-needed` (libtorch_cuda, in
    // scripts/link_torch.rs); rustc's `-as-needed` modifier is still unstable.
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    // This crate's own tests run without LD_LIBRARY_PATH too.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

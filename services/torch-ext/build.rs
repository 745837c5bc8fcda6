//! Builds csrc/shim.cpp (autocast), csrc/fused.cpp (fused optimizer
//! updates, always at -O3) and csrc/distributed.cpp (c10d: TCPStore,
//! ProcessGroupGloo) against the headers of the libtorch that tch links (the
//! project venv's `torch` package, or `LIBTORCH`), the way torch-sys builds
//! its own C++: C++17, the new libstdc++ ABI the wheel is built with.
//! Gloo's headers, which the wheel lacks, come from Debian's libgloo-dev.
//!
//! NCCL (csrc/nccl.cpp, ProcessGroupNCCL) is built only where all its parts
//! are found; otherwise a `cargo:warning` names what is missing and the crate
//! builds without it (`Backend::Nccl` then says so at run time). Detection,
//! all by file existence, no GPU or CUDA toolkit needed:
//! - `libtorch_cuda.so` in libtorch's `lib/` (ProcessGroupNCCL's code; a
//!   CPU-only libtorch lacks it);
//! - the site-packages `nvidia/` folder next to the `torch` package (the
//!   CUDA wheels torch depends on), and in its `*/include` folders:
//!   `nccl.h` (nvidia-nccl-cu13: `nvidia/nccl/include`), `cuda_runtime.h`
//!   (nvidia-cuda-runtime), `crt/host_config.h` (nvidia-cuda-crt) and
//!   `nv/target` (nvidia-cuda-cccl), which ProcessGroupNCCL.hpp includes
//!   through ATen/c10's CUDA headers; today all but nccl.h sit in
//!   `nvidia/cu13/include`. scripts/setup.sh installs the two header-only
//!   wheels (crt, cccl) the torch wheel does not pull in.
//! - `INCEPTION_TORCH_EXT_NO_NCCL=1` forces NCCL off (an escape hatch, and
//!   how the build without it is tested).
//!
//! When found, nccl.cpp is compiled with `-DUSE_C10D_NCCL` (without it the
//! header declares nothing), `torch_cuda` and `c10_cuda` are linked, and
//! `cfg(inception_nccl)` is set; otherwise `INCEPTION_NCCL_MISSING` carries
//! the reason into the crate.
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where libgloo-dev puts Gloo's headers (checked before compiling).
const GLOO_CONFIG_HEADER: &str = "/usr/include/gloo/config.h";
/// Set to anything but "" or "0": build without NCCL.
const NO_NCCL: &str = "INCEPTION_TORCH_EXT_NO_NCCL";
/// The headers the NCCL part needs, each found in some `nvidia/*/include`,
/// with the wheel that provides it.
const NCCL_HEADERS: [(&str, &str); 4] = [
    ("nccl.h", "nvidia-nccl-cu13"),
    ("cuda_runtime.h", "nvidia-cuda-runtime"),
    ("crt/host_config.h", "nvidia-cuda-crt==13.0.88"),
    ("nv/target", "nvidia-cuda-cccl==13.0.85"),
];

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

/// The include folders NCCL's part needs, or what is missing.
fn find_nccl(torch: &Path) -> Result<Vec<PathBuf>, String> {
    if std::env::var(NO_NCCL).is_ok_and(|v| !v.is_empty() && v != "0") {
        return Err(format!("{NO_NCCL} is set"));
    }
    let mut missing = Vec::new();
    let torch_cuda = torch.join("lib/libtorch_cuda.so");
    if !torch_cuda.exists() {
        missing.push(format!("{} (a CUDA build of libtorch)", torch_cuda.display()));
    }
    // site-packages/torch -> site-packages/nvidia/*/include
    let nvidia = torch.parent().map(|site| site.join("nvidia")).unwrap_or_default();
    let include_dirs: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .map(|entries| {
            let mut dirs: Vec<PathBuf> =
                entries.filter_map(Result::ok).map(|e| e.path().join("include")).filter(|d| d.is_dir()).collect();
            dirs.sort();
            dirs
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    for (header, wheel) in NCCL_HEADERS {
        match include_dirs.iter().find(|dir| dir.join(header).exists()) {
            Some(dir) => {
                if !found.contains(dir) {
                    found.push(dir.clone());
                }
            }
            None => missing.push(format!("{header} (wheel {wheel}) in {}/*/include", nvidia.display())),
        }
    }
    if missing.is_empty() {
        Ok(found)
    } else {
        Err(format!("missing {}", missing.join(", ")))
    }
}

fn torch_build(include: &Path) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false);
    build
}

fn main() {
    for file in [
        "csrc/shim.cpp",
        "csrc/distributed.cpp",
        "csrc/reducer.cpp",
        "csrc/fused.cpp",
        "csrc/nccl.cpp",
        "csrc/message.hpp",
        "csrc/process_group.hpp",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-changed={GLOO_CONFIG_HEADER}");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=PYTHON");
    println!("cargo:rerun-if-env-changed={NO_NCCL}");
    println!("cargo::rustc-check-cfg=cfg(inception_nccl)");
    let Some(torch) = torch_dir() else {
        panic!("libtorch not found: run scripts/setup.sh (it installs torch into .venv), or set LIBTORCH");
    };
    require_gloo_headers();
    let include = torch.join("include");
    let nccl = find_nccl(&torch);
    if let Some(nvidia) = torch.parent().map(|site| site.join("nvidia")) {
        // A wheel installed or removed later changes the outcome.
        println!("cargo:rerun-if-changed={}", nvidia.display());
    }
    torch_build(&include)
        .file("csrc/shim.cpp")
        .file("csrc/distributed.cpp")
        .file("csrc/reducer.cpp")
        // Without it ProcessGroupGloo.hpp declares nothing.
        .define("USE_C10D_GLOO", None)
        .compile("inception_torch_ext");
    // Optimised whatever the profile: its loop is the whole point.
    // (No errno from sqrt, so that it vectorises.)
    torch_build(&include)
        .file("csrc/fused.cpp")
        .opt_level(3)
        .flag("-fno-math-errno")
        .compile("inception_torch_ext_fused");
    match &nccl {
        Ok(cuda_includes) => {
            let mut build = torch_build(&include);
            build.file("csrc/nccl.cpp").define("USE_C10D_NCCL", None);
            for dir in cuda_includes {
                build.include(dir);
            }
            build.compile("inception_torch_ext_nccl");
            println!("cargo:rustc-cfg=inception_nccl");
        }
        Err(missing) => {
            println!("cargo:warning=inception-torch-ext: building without NCCL: {missing}");
            println!("cargo:rustc-env=INCEPTION_NCCL_MISSING={missing}");
        }
    }
    let lib = torch.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    // After the shim's archives on the link line, so `--as-needed` keeps
    // them: the shim references them by symbol (checked with readelf on the
    // tests). Only a library nothing names needs `--no-as-needed`
    // (libtorch_cuda in scripts/link_torch.rs, for binaries whose code never
    // names it); rustc's `-as-needed` modifier is still unstable.
    if nccl.is_ok() {
        // ProcessGroupNCCL (torch_cuda), c10::cuda::device_count (c10_cuda).
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    // This crate's own tests run without LD_LIBRARY_PATH too.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

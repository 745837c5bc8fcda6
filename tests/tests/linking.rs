//! The binaries that run models really link libtorch_cuda (the linker drops
//! it under --as-needed, and then a GPU is never seen), and find libtorch
//! without LD_LIBRARY_PATH (rpath).

use inception_integration_tests::binary;
use std::process::Command;

#[test]
fn model_binaries_link_libtorch_cuda_and_carry_an_rpath() {
    let torch_lib = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"))
        .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .output()
        .expect("the project's .venv (scripts/setup.sh)");
    let torch_lib = String::from_utf8_lossy(&torch_lib.stdout).trim().to_string();
    let has_cuda = std::path::Path::new(&torch_lib).join("libtorch_cuda.so").exists();
    for name in ["inception-trainer", "inception-evaluator"] {
        let out = Command::new("ldd").arg(binary(name)).env_remove("LD_LIBRARY_PATH").output().expect("ldd");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("not found"), "{name} misses libraries without LD_LIBRARY_PATH:\n{text}");
        assert!(text.contains("libtorch_cpu.so"), "{text}");
        if has_cuda {
            assert!(text.contains("libtorch_cuda.so"), "{name} must link libtorch_cuda:\n{text}");
        }
    }
}

//! Runtime choice of AVX2 for the pixel kernels. The kernels are plain Rust
//! on fixed-size arrays; compiled a second time with AVX2 enabled they use
//! 8-wide registers instead of SSE2's 4 (the baseline of x86-64 builds).
//! No FMA: results are bit-identical on either path.

/// `avx2_dispatch!(pub fn name(args) => portable)` defines `name`, which
/// calls `portable` (an `#[inline(always)]` fn) compiled for AVX2 when the
/// CPU has it and as is otherwise.
macro_rules! avx2_dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $portable:ident) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn with_avx2($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, checked just above.
                    return unsafe { with_avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}

pub(crate) use avx2_dispatch;

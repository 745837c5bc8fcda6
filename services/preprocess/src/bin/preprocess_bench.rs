//! `inception-preprocess-bench`: examples/sec of the preprocess work per
//! core (decode JPEG + training distortion, or decode + eval crop/resize),
//! on JPEGs of about 500x375 written to a folder so that
//! `bench/torchvision_preprocess_bench.py` times torchvision on the same
//! files. `--workers N` runs N independent workers (threads, one core each),
//! as N worker processes would.

use anyhow::Context;
use clap::Parser;
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(name = "inception-preprocess-bench")]
struct Args {
    /// Folder of the benchmark JPEGs (written when missing).
    #[arg(long, default_value = "var/bench-images-v2")]
    images: PathBuf,
    /// How many JPEGs to write.
    #[arg(long, default_value_t = 64)]
    count: usize,
    /// Output side in pixels.
    #[arg(long, default_value_t = 299)]
    image_size: u32,
    /// Passes over the images per worker.
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// Independent workers (one thread each).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Eval preprocessing (central crop 0.875 + bilinear) instead of training distortion.
    #[arg(long)]
    eval: bool,
    /// Also print the time of each stage (one worker, `--passes` passes).
    #[arg(long)]
    breakdown: bool,
    /// glibc malloc's defaults instead of the workers' retain_freed_memory.
    #[arg(long)]
    default_malloc: bool,
}

/// Mean milliseconds per image of each step: decode, crop + resize + flip
/// and colour (training), or decode and crop + resize + rounding (eval).
fn breakdown(jpegs: &[Vec<u8>], size: u32, eval: bool, passes: usize) -> anyhow::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (mut decode, mut geometry, mut colour) = (0.0, 0.0, 0.0);
    for jpeg in jpegs.iter().cycle().take(jpegs.len() * passes.max(1)) {
        let t = Instant::now();
        let decoded = inception_vision::decode_rgb(jpeg, u64::MAX)?;
        decode += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let img = &decoded.image;
        if eval {
            std::hint::black_box(inception_vision::eval_image(img, size));
            geometry += t.elapsed().as_secs_f64();
            continue;
        }
        let crop = inception_vision::transform::sample_distorted_crop(
            img.width(),
            img.height(),
            &[],
            &Default::default(),
            &mut rng,
        );
        let method = inception_vision::ResizeMethod::from_index(rng.random_range(0..4));
        let mut px = inception_vision::resize::resize(img, crop, size, method);
        inception_vision::flip_left_right(&mut px, size);
        geometry += t.elapsed().as_secs_f64();
        let t = Instant::now();
        px.iter_mut().for_each(|v| *v /= 255.0);
        inception_vision::color::distort_color(&mut px, rng.random_range(0..2), &mut rng);
        std::hint::black_box(inception_vision::quantize(&px, 255.0));
        colour += t.elapsed().as_secs_f64();
    }
    let n = (jpegs.len() * passes.max(1)) as f64 / 1000.0;
    if eval {
        println!(
            "breakdown   eval  {size} px per image: decode {:.2} ms, central crop+resize+rounding {:.2} ms",
            decode / n,
            geometry / n
        );
    } else {
        println!(
            "breakdown   train {size} px per image: decode {:.2} ms, crop+resize+flip {:.2} ms, colour {:.2} ms",
            decode / n,
            geometry / n,
            colour / n
        );
    }
    Ok(())
}

/// A photo-like 500x375 (or 375x500) image: smooth gradients, a few shapes
/// and sensor-like noise, so JPEG decoding costs what it costs on photos.
fn photo(i: usize) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
    let (w, h) = if i % 4 == 3 { (375, 500) } else { (500, 375) };
    let base: [f32; 3] = [rng.random_range(40.0..200.0), rng.random_range(40.0..200.0), rng.random_range(40.0..200.0)];
    let (cx, cy, r) = (rng.random_range(0.0..w as f32), rng.random_range(0.0..h as f32), rng.random_range(40.0..160.0));
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let inside = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt() < r;
        let mut px = [0u8; 3];
        for c in 0..3 {
            let v =
                base[c] + 50.0 * ((fx / 37.0 + c as f32).sin() * (fy / 23.0).cos()) + if inside { 60.0 } else { 0.0 };
            px[c] = (v + rng.random_range(-30.0..30.0)).clamp(0.0, 255.0) as u8;
        }
        Rgb(px)
    })
}

fn ensure_images(dir: &Path, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    (0..count)
        .map(|i| {
            let path = dir.join(format!("photo_{i:04}.jpg"));
            if !path.is_file() {
                photo(i)
                    .save_with_format(&path, image::ImageFormat::Jpeg)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
        })
        .collect()
}

/// One worker: every image `passes` times; returns the examples done.
fn work(jpegs: &[Vec<u8>], size: u32, passes: usize, eval: bool, seed: u64) -> anyhow::Result<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut checksum = 0u64;
    for _ in 0..passes {
        for jpeg in jpegs {
            let decoded = inception_vision::decode_rgb(jpeg, u64::MAX)?;
            let out = if eval {
                inception_vision::eval_image(&decoded.image, size)
            } else {
                inception_vision::train_image(&decoded.image, size, &[], &Default::default(), &mut rng)
            };
            checksum = checksum.wrapping_add(u64::from(out[out.len() / 2]));
        }
    }
    std::hint::black_box(checksum);
    Ok(jpegs.len() * passes)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // As the workers do by default (preprocess.retain_freed_memory).
    let retained = !a.default_malloc && inception_core::memory::retain_freed_memory();
    let jpegs = ensure_images(&a.images, a.count)?;
    let mean_kb = jpegs.iter().map(Vec::len).sum::<usize>() as f64 / jpegs.len().max(1) as f64 / 1024.0;
    work(&jpegs[..jpegs.len().min(4)], a.image_size, 1, a.eval, 0)?; // warm-up
    let started = Instant::now();
    let done: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.workers)
            .map(|w| {
                let jpegs = &jpegs;
                s.spawn(move || work(jpegs, a.image_size, a.passes, a.eval, w as u64 + 1))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?)
            .sum::<anyhow::Result<usize>>()
    })?;
    let secs = started.elapsed().as_secs_f64();
    if a.breakdown {
        breakdown(&jpegs, a.image_size, a.eval, a.passes)?;
    }
    println!(
        "ours        {:<5} {} px, {} worker(s): {:.1} examples/s ({:.1} per worker; {} JPEGs, mean {:.0} KiB; retain_freed_memory={retained})",
        if a.eval { "eval" } else { "train" },
        a.image_size,
        a.workers,
        done as f64 / secs,
        done as f64 / secs / a.workers as f64,
        jpegs.len(),
        mean_kb
    );
    Ok(())
}

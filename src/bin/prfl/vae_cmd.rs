//! `prfl encode` and `prfl decode`: frames to normalised latents through the Wan2.1 VAE, and
//! latents back to frames (see `prfl::vae`).
//!
//! Frames come from a safetensors file (`frames` `[T, H, W, 3]`, float in [-1, 1] or uint8), a
//! folder of PNG files (in name order) or a GIF; they go to a safetensors file (`frames`, f32
//! in [-1, 1]), a GIF, or a folder of PNGs, chosen by the output's extension. Latents are
//! `latent` `[z, F, h, w]` (or `[B, z, F, h, w]` when decoding), normalised with the VAE's
//! `latents_mean` / `latents_std` as the DiT expects.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use clap::Args;
use prfl::safetensors::{write_safetensors, Safetensors};
use prfl::tensor::HostTensor;
use prfl::vae::{Video, WanVae};

use crate::config_file::err;

/// `prfl encode`.
#[derive(Args)]
pub struct EncodeArgs {
    /// The VAE: a diffusers directory (`config.json` + `diffusion_pytorch_model.safetensors`) or
    /// the original `Wan2.1_VAE.pth`.
    #[arg(long)]
    vae: PathBuf,
    /// The frames: a `.safetensors` file (`frames` [T, H, W, 3]), a folder of PNGs, or a `.gif`.
    #[arg(long)]
    input: PathBuf,
    /// The latents to write (`latent` [z, F, H/8, W/8], normalised for the DiT).
    #[arg(long)]
    out: PathBuf,
}

/// `prfl decode`.
#[derive(Args)]
pub struct DecodeArgs {
    /// The VAE (as for `prfl encode`).
    #[arg(long)]
    vae: PathBuf,
    /// A safetensors file with `latent` [z, F, h, w] or [B, z, F, h, w] (normalised).
    #[arg(long)]
    input: PathBuf,
    /// `.safetensors` (`frames` [T, H, W, 3] or [B, T, H, W, 3], f32 in [-1, 1]), `.gif`, or a
    /// folder for PNG files.
    #[arg(long)]
    out: PathBuf,
}

pub fn encode(a: &EncodeArgs) -> Result<(), String> {
    let vae = WanVae::load(&a.vae).map_err(err)?;
    let frames = read_frames(&a.input)?;
    let z = vae.encode(&frames).map_err(err)?;
    let shape = z.shape().to_vec();
    let t = HostTensor::from_f32(shape.clone(), z.data).map_err(err)?;
    write_safetensors(&a.out, [("latent", &t)], None).map_err(err)?;
    println!(
        "encoded {} frames of {}x{} into latent {:?}: {}",
        frames.t,
        frames.h,
        frames.w,
        shape,
        a.out.display()
    );
    Ok(())
}

pub fn decode(a: &DecodeArgs) -> Result<(), String> {
    let vae = WanVae::load(&a.vae).map_err(err)?;
    let file = Safetensors::map(&a.input).map_err(err)?;
    let t = file
        .read("latent")
        .map_err(|e| format!("{}: {e}", a.input.display()))?;
    let (batch, dims) = match t.shape.as_slice() {
        [c, f, h, w] => (1, [*c, *f, *h, *w]),
        [b, c, f, h, w] => (*b, [*c, *f, *h, *w]),
        s => {
            return Err(format!(
                "{}: `latent` has shape {s:?}, expected [z, F, h, w] or [B, z, F, h, w]",
                a.input.display()
            ))
        }
    };
    let data = t.to_f32();
    let per = dims.iter().product::<usize>();
    let mut videos = Vec::with_capacity(batch);
    for b in 0..batch {
        let [c, f, h, w] = dims;
        let z = Video::new(c, f, h, w, data[b * per..(b + 1) * per].to_vec()).map_err(err)?;
        videos.push(vae.decode(&z).map_err(err)?);
    }
    write_frames(&a.out, &videos)?;
    let v = &videos[0];
    println!(
        "decoded {batch} x {} frames of {}x{}: {}",
        v.t,
        v.h,
        v.w,
        a.out.display()
    );
    Ok(())
}

fn has_ext(p: &Path, ext: &str) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// `[T, H, W, 3]` interleaved RGB in [-1, 1] -> a `[3, T, H, W]` video.
fn video_from_thwc(t: usize, h: usize, w: usize, rgb: &[f32]) -> Video {
    let mut v = Video::zeros(3, t, h, w);
    let plane = h * w;
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        let (f, p) = (i / plane, i % plane);
        for (c, val) in px.iter().enumerate() {
            v.data[(c * t + f) * plane + p] = *val;
        }
    }
    v
}

/// A `[3, T, H, W]` video -> `[T, H, W, 3]` interleaved values.
fn thwc_from_video(v: &Video) -> Vec<f32> {
    let plane = v.plane();
    let mut out = vec![0.0f32; v.data.len()];
    for c in 0..v.c {
        for f in 0..v.t {
            for p in 0..plane {
                out[(f * plane + p) * v.c + c] = v.data[(c * v.t + f) * plane + p];
            }
        }
    }
    out
}

fn to_unit(b: u8) -> f32 {
    b as f32 / 127.5 - 1.0
}

fn to_byte(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Reads frames from a safetensors file, a GIF or a folder of PNGs.
fn read_frames(path: &Path) -> Result<Video, String> {
    let (t, h, w, rgb) = if path.is_dir() {
        read_png_folder(path)?
    } else if has_ext(path, "gif") {
        read_gif(path)?
    } else {
        read_frames_safetensors(path)?
    };
    if rgb.iter().any(|v| !(-1.0..=1.0).contains(v)) {
        return Err(format!(
            "{}: frame values must lie in [-1, 1]",
            path.display()
        ));
    }
    Ok(video_from_thwc(t, h, w, &rgb))
}

type Frames = (usize, usize, usize, Vec<f32>);

fn read_frames_safetensors(path: &Path) -> Result<Frames, String> {
    let file = Safetensors::map(path).map_err(err)?;
    let entry = file
        .get("frames")
        .ok_or_else(|| format!("{}: no tensor `frames`", path.display()))?;
    let [t, h, w, 3] = entry.shape[..] else {
        return Err(format!(
            "{}: `frames` has shape {:?}, expected [T, H, W, 3]",
            path.display(),
            entry.shape
        ));
    };
    let data = if entry.stored_dtype == "U8" {
        file.data(entry)
            .map_err(err)?
            .iter()
            .map(|b| to_unit(*b))
            .collect()
    } else {
        file.read_entry(entry).map_err(err)?.to_f32()
    };
    Ok((t, h, w, data))
}

fn read_png_folder(dir: &Path) -> Result<Frames, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| has_ext(p, "png"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no .png files", dir.display()));
    }
    let (mut size, mut data) = (None, Vec::new());
    for f in &files {
        let (w, h, rgb) = read_png(f)?;
        if *size.get_or_insert((w, h)) != (w, h) {
            return Err(format!(
                "{}: {w}x{h}, but the first frame is {}x{}",
                f.display(),
                size.map_or(0, |s| s.0),
                size.map_or(0, |s| s.1)
            ));
        }
        data.extend(rgb.iter().map(|b| to_unit(*b)));
    }
    let (w, h) = size.unwrap_or((0, 0));
    Ok((files.len(), h, w, data))
}

/// One PNG as 8-bit RGB (grey, grey+alpha and RGBA are converted; alpha is dropped).
fn read_png(path: &Path) -> Result<(usize, usize, Vec<u8>), String> {
    let e = |x: &dyn std::fmt::Display| format!("{}: {x}", path.display());
    let file = File::open(path).map_err(|x| e(&x))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().map_err(|x| e(&x))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|x| e(&x))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let px = &buf[..info.buffer_size()];
    let rgb: Vec<u8> = match info.color_type {
        png::ColorType::Rgb => px.to_vec(),
        png::ColorType::Rgba => px
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        png::ColorType::Grayscale => px.iter().flat_map(|g| [*g, *g, *g]).collect(),
        png::ColorType::GrayscaleAlpha => px
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        other => return Err(e(&format!("unsupported PNG colour type {other:?}"))),
    };
    if rgb.len() != w * h * 3 {
        return Err(e(&"unexpected PNG row layout (interlaced or 16-bit?)"));
    }
    Ok((w, h, rgb))
}

/// A GIF's frames composited onto its canvas (each frame drawn over the previous one).
fn read_gif(path: &Path) -> Result<Frames, String> {
    let e = |x: &dyn std::fmt::Display| format!("{}: {x}", path.display());
    let file = File::open(path).map_err(|x| e(&x))?;
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    let mut dec = opts
        .read_info(std::io::BufReader::new(file))
        .map_err(|x| e(&x))?;
    let (w, h) = (dec.width() as usize, dec.height() as usize);
    let mut canvas = vec![0u8; w * h * 3];
    let (mut t, mut data) = (0, Vec::new());
    while let Some(frame) = dec.read_next_frame().map_err(|x| e(&x))? {
        let (fl, ft) = (frame.left as usize, frame.top as usize);
        let fw = frame.width as usize;
        for (i, px) in frame.buffer.chunks_exact(4).enumerate() {
            let (x, y) = (fl + i % fw, ft + i / fw);
            if px[3] > 0 && x < w && y < h {
                canvas[(y * w + x) * 3..][..3].copy_from_slice(&px[..3]);
            }
        }
        data.extend(canvas.iter().map(|b| to_unit(*b)));
        t += 1;
    }
    if t == 0 {
        return Err(e(&"no frames"));
    }
    Ok((t, h, w, data))
}

/// Writes decoded videos by the output's extension (safetensors, GIF, or a PNG folder).
fn write_frames(out: &Path, videos: &[Video]) -> Result<(), String> {
    if has_ext(out, "safetensors") {
        let v = &videos[0];
        let mut data = Vec::new();
        for v in videos {
            data.extend(thwc_from_video(v));
        }
        let mut shape = vec![v.t, v.h, v.w, v.c];
        if videos.len() > 1 {
            shape.insert(0, videos.len());
        }
        let t = HostTensor::from_f32(shape, data).map_err(err)?;
        return write_safetensors(out, [("frames", &t)], None).map_err(err);
    }
    let [v] = videos else {
        return Err(format!(
            "{}: a batch of {} videos can only be written to a .safetensors file",
            out.display(),
            videos.len()
        ));
    };
    let bytes: Vec<u8> = thwc_from_video(v).into_iter().map(to_byte).collect();
    let frame_len = v.h * v.w * 3;
    let e = |x: &dyn std::fmt::Display| format!("{}: {x}", out.display());
    if has_ext(out, "gif") {
        let (w, h) = (
            u16::try_from(v.w).map_err(|_| e(&"frame too wide for a GIF"))?,
            u16::try_from(v.h).map_err(|_| e(&"frame too tall for a GIF"))?,
        );
        let file = File::create(out).map_err(|x| e(&x))?;
        let mut enc = gif::Encoder::new(BufWriter::new(file), w, h, &[]).map_err(|x| e(&x))?;
        enc.set_repeat(gif::Repeat::Infinite).map_err(|x| e(&x))?;
        for rgb in bytes.chunks_exact(frame_len) {
            let mut frame = gif::Frame::from_rgb_speed(w, h, rgb, 10);
            frame.delay = 6; // hundredths of a second: about 16 frames per second, as Wan's
            enc.write_frame(&frame).map_err(|x| e(&x))?;
        }
        return Ok(());
    }
    std::fs::create_dir_all(out).map_err(|x| e(&x))?;
    for (i, rgb) in bytes.chunks_exact(frame_len).enumerate() {
        let path = out.join(format!("frame_{i:05}.png"));
        let pe = |x: &dyn std::fmt::Display| format!("{}: {x}", path.display());
        let file = File::create(&path).map_err(|x| pe(&x))?;
        let mut enc = png::Encoder::new(BufWriter::new(file), v.w as u32, v.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|x| pe(&x))?;
        writer.write_image_data(rgb).map_err(|x| pe(&x))?;
    }
    Ok(())
}

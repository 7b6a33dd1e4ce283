//! A channel-first video (or latent) tensor `[C, T, H, W]` in f32: what the VAE's layers pass
//! between them, one chunk of frames at a time.

use crate::{Error, Result};

/// `data[((c * t + frame) * h + y) * w + x]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Video {
    pub c: usize,
    pub t: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

impl Video {
    /// A video from its data, checking the length.
    pub fn new(c: usize, t: usize, h: usize, w: usize, data: Vec<f32>) -> Result<Video> {
        if data.len() != c * t * h * w {
            return Err(Error::InvalidInput(format!(
                "video [{c}, {t}, {h}, {w}] needs {} values, got {}",
                c * t * h * w,
                data.len()
            )));
        }
        Ok(Video { c, t, h, w, data })
    }

    /// All zeros.
    pub fn zeros(c: usize, t: usize, h: usize, w: usize) -> Video {
        Video {
            c,
            t,
            h,
            w,
            data: vec![0.0; c * t * h * w],
        }
    }

    /// Values per frame plane (`h * w`).
    pub fn plane(&self) -> usize {
        self.h * self.w
    }

    /// The shape as `[C, T, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.c, self.t, self.h, self.w]
    }

    /// Frames `t0..t1` (a copy).
    pub fn frames(&self, t0: usize, t1: usize) -> Video {
        let (p, n) = (self.plane(), t1 - t0);
        let mut data = Vec::with_capacity(self.c * n * p);
        for ch in 0..self.c {
            data.extend_from_slice(&self.data[(ch * self.t + t0) * p..(ch * self.t + t1) * p]);
        }
        Video {
            c: self.c,
            t: n,
            h: self.h,
            w: self.w,
            data,
        }
    }

    /// The last `n` frames (all of them when there are fewer).
    pub fn last_frames(&self, n: usize) -> Video {
        self.frames(self.t - n.min(self.t), self.t)
    }

    /// Channels `c0..c1` (a copy).
    pub fn channels(&self, c0: usize, c1: usize) -> Video {
        let n = self.t * self.plane();
        Video {
            c: c1 - c0,
            t: self.t,
            h: self.h,
            w: self.w,
            data: self.data[c0 * n..c1 * n].to_vec(),
        }
    }

    /// `parts` joined along time (all with this channel count and frame size).
    pub fn concat_time(parts: &[&Video]) -> Result<Video> {
        let first = parts
            .first()
            .ok_or_else(|| Error::InvalidInput("no frames to join".into()))?;
        let (c, h, w) = (first.c, first.h, first.w);
        if let Some(p) = parts.iter().find(|p| (p.c, p.h, p.w) != (c, h, w)) {
            return Err(Error::InvalidInput(format!(
                "cannot join a [{}, _, {}, {}] chunk to [{c}, _, {h}, {w}] ones",
                p.c, p.h, p.w
            )));
        }
        let t: usize = parts.iter().map(|p| p.t).sum();
        let plane = h * w;
        let mut data = Vec::with_capacity(c * t * plane);
        for ch in 0..c {
            for p in parts {
                data.extend_from_slice(&p.data[ch * p.t * plane..(ch + 1) * p.t * plane]);
            }
        }
        Ok(Video { c, t, h, w, data })
    }

    /// Adds `other` element-wise (same shape; the residual connections).
    pub fn add_assign(&mut self, other: &Video) {
        debug_assert_eq!(self.shape(), other.shape());
        self.data
            .iter_mut()
            .zip(&other.data)
            .for_each(|(a, b)| *a += b);
    }
}

//! A small, seeded, reproducible random source: xoshiro256++ seeded through SplitMix64, with
//! Box-Muller normals. No external crate, so streams never change under a dependency update;
//! the tests pin the first outputs for that reason.
//!
//! Not cryptographic. One `Rng` per independent stream (per rank, per data-loader worker): seed
//! them with distinct values rather than sharing one across threads.

use crate::{Error, Result};

/// SplitMix64 (Steele, Lea, Flood 2014), used to expand a 64-bit seed into xoshiro's state.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++ (Blackman, Vigna 2019).
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
    /// The second value of the last Box-Muller pair, returned by the next normal draw.
    spare_normal: Option<f64>,
}

impl Rng {
    /// A generator whose whole stream is determined by `seed` (any value, 0 included).
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Rng {
            s,
            spare_normal: None,
        }
    }

    /// The generator's complete state, so that a resumed training run continues the very same
    /// stream: the four xoshiro256++ words, then (only when a Box-Muller spare normal is pending)
    /// that spare's f64 bits. Dropping the spare would shift every later normal draw.
    pub fn state(&self) -> Vec<u64> {
        let mut words = self.s.to_vec();
        if let Some(z) = self.spare_normal {
            words.push(z.to_bits());
        }
        words
    }

    /// Rebuilds a generator from [`Rng::state`]. Rejects a length other than 4 or 5 words and the
    /// all-zero xoshiro state (a fixed point that would emit zeros forever), since either can only
    /// come from a corrupt or foreign checkpoint.
    pub fn from_state(words: &[u64]) -> Result<Self> {
        let (s, spare) = match words {
            [a, b, c, d] => ([*a, *b, *c, *d], None),
            [a, b, c, d, z] => ([*a, *b, *c, *d], Some(f64::from_bits(*z))),
            _ => {
                return Err(Error::InvalidInput(format!(
                    "rng state needs 4 or 5 words, got {}",
                    words.len()
                )))
            }
        };
        if s == [0; 4] {
            return Err(Error::InvalidInput(
                "rng state is all zeros (not a reachable xoshiro256++ state)".into(),
            ));
        }
        if spare.is_some_and(|z| !z.is_finite()) {
            return Err(Error::InvalidInput(
                "rng state holds a non-finite spare normal".into(),
            ));
        }
        Ok(Rng {
            s,
            spare_normal: spare,
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, 1)` with 24 random bits (every value exactly representable, never 1.0).
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Standard normal (Box-Muller in f64; the pair's second value is kept for the next call).
    pub fn normal_f64(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare_normal = Some(r * sin);
        r * cos
    }

    /// Standard normal, rounded to f32.
    pub fn normal_f32(&mut self) -> f32 {
        self.normal_f64() as f32
    }

    /// Fills `out` with independent standard normals (the noise `eps` of a latent).
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        out.iter_mut().for_each(|x| *x = self.normal_f32());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_value() {
        // First output of SplitMix64 from state 0 (the published reference value).
        let mut state = 0;
        assert_eq!(splitmix64(&mut state), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn pinned_stream() {
        // xoshiro256++ seeded by SplitMix64(42), checked against an independent transcription
        // of the reference C code. A change here silently changes every seeded run.
        let mut r = Rng::seed_from_u64(42);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                0xD076_4D4F_4476_689F,
                0x519E_4174_576F_3791,
                0xFBE0_7CFB_0C24_ED8C
            ]
        );
    }

    #[test]
    fn streams_are_deterministic_and_seed_dependent() {
        let a: Vec<u64> = {
            let mut r = Rng::seed_from_u64(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::seed_from_u64(7);
        assert_eq!(a, (0..4).map(|_| r.next_u64()).collect::<Vec<_>>());
        let mut other = Rng::seed_from_u64(8);
        assert_ne!(a[0], other.next_u64());
    }

    #[test]
    fn state_round_trip_continues_the_stream() {
        let mut a = Rng::seed_from_u64(3);
        a.next_u64();
        // An odd number of normals leaves a Box-Muller spare pending: it must travel too.
        a.normal_f64();
        let words = a.state();
        assert_eq!(words.len(), 5);
        let mut b = Rng::from_state(&words).unwrap();
        for _ in 0..5 {
            assert_eq!(a.normal_f64().to_bits(), b.normal_f64().to_bits());
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut c = Rng::seed_from_u64(9);
        assert_eq!(c.state().len(), 4);
        let mut d = Rng::from_state(&c.state()).unwrap();
        assert_eq!(c.next_u64(), d.next_u64());
        assert!(Rng::from_state(&[1, 2, 3]).is_err());
        assert!(Rng::from_state(&[0; 4]).is_err());
        assert!(Rng::from_state(&[1, 2, 3, 4, f64::NAN.to_bits()]).is_err());
    }

    #[test]
    fn moments() {
        let mut r = Rng::seed_from_u64(1);
        let n = 200_000;
        let u: Vec<f64> = (0..n).map(|_| r.uniform_f64()).collect();
        let mean = u.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 5e-3, "uniform mean {mean}");
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mut z = vec![0.0f32; n];
        r.fill_normal(&mut z);
        let mean = z.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = z.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 1e-2, "normal mean {mean}");
        assert!((var - 1.0).abs() < 2e-2, "normal variance {var}");
        let f: Vec<f32> = (0..1000).map(|_| r.uniform_f32()).collect();
        assert!(f.iter().all(|&x| (0.0..1.0).contains(&x)));
    }
}

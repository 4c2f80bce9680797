//! Message keys and sizes. Sans-IO, seeded.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// How keys are chosen: `none`, `round-robin` (over 1000 keys), `uniform:N`, `zipf:N:S`.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySpec {
    None,
    RoundRobin,
    Uniform(u64),
    Zipf { n: u64, s: f64 },
}

impl std::str::FromStr for KeySpec {
    type Err = String;

    fn from_str(text: &str) -> Result<KeySpec, String> {
        let bad =
            || format!("bad --keys {text:?}: expected none, round-robin, uniform:N or zipf:N:S");
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            ["none"] => Ok(KeySpec::None),
            ["round-robin"] => Ok(KeySpec::RoundRobin),
            ["uniform", n] => {
                n.parse().ok().filter(|n| *n > 0).map(KeySpec::Uniform).ok_or_else(bad)
            }
            ["zipf", n, s] => {
                let n: u64 =
                    n.parse().ok().filter(|n| *n > 0 && *n <= 10_000_000).ok_or_else(bad)?;
                let s: f64 =
                    s.parse().ok().filter(|s: &f64| *s > 0.0 && s.is_finite()).ok_or_else(bad)?;
                Ok(KeySpec::Zipf { n, s })
            }
            _ => Err(bad()),
        }
    }
}

/// Draws keys per the spec, from a seeded generator.
pub struct KeyGen {
    spec: KeySpec,
    rng: SmallRng,
    counter: u64,
    zipf: Option<Zipf<f64>>,
}

impl KeyGen {
    pub fn new(spec: KeySpec, seed: u64) -> KeyGen {
        let zipf = match &spec {
            KeySpec::Zipf { n, s } => Zipf::new(*n, *s).ok(),
            _ => None,
        };
        KeyGen { spec, rng: SmallRng::seed_from_u64(seed), counter: 0, zipf }
    }

    /// The next key's index (`None` for unkeyed messages).
    pub fn next_index(&mut self) -> Option<u64> {
        let index = match &self.spec {
            KeySpec::None => return None,
            KeySpec::RoundRobin => self.counter % 1000,
            KeySpec::Uniform(n) => self.rng.gen_range(0..*n),
            // Zipf draws ranks 1..=n; key 0 is the most frequent.
            KeySpec::Zipf { .. } => {
                self.zipf.as_ref().map_or(0, |z| z.sample(&mut self.rng) as u64 - 1)
            }
        };
        self.counter += 1;
        Some(index)
    }

    pub fn next_key(&mut self) -> Option<bytes::Bytes> {
        self.next_index().map(|i| bytes::Bytes::from(format!("key-{i}")))
    }
}

/// Message sizes: fixed (`1024`) or uniform in a range (`200..500`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeSpec {
    pub min: usize,
    pub max: usize,
}

impl std::str::FromStr for SizeSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<SizeSpec, String> {
        let bad = || format!("bad --message-size {text:?}: expected BYTES or MIN..MAX");
        let (min, max) = match text.split_once("..") {
            Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
            None => {
                let n = text.parse().map_err(|_| bad())?;
                (n, n)
            }
        };
        if min == 0 || min > max || max > 4 * 1024 * 1024 - 1024 {
            return Err(bad());
        }
        Ok(SizeSpec { min, max })
    }
}

impl SizeSpec {
    pub fn draw(&self, rng_value: u64) -> usize {
        if self.min == self.max {
            self.min
        } else {
            self.min + (rng_value % (self.max - self.min + 1) as u64) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!("none".parse(), Ok(KeySpec::None));
        assert_eq!("uniform:10".parse(), Ok(KeySpec::Uniform(10)));
        assert_eq!("zipf:100:1.1".parse(), Ok(KeySpec::Zipf { n: 100, s: 1.1 }));
        assert!("zipf:0:1".parse::<KeySpec>().is_err());
        assert!("sometimes".parse::<KeySpec>().is_err());
        assert_eq!("1024".parse(), Ok(SizeSpec { min: 1024, max: 1024 }));
        assert_eq!("200..500".parse(), Ok(SizeSpec { min: 200, max: 500 }));
        assert!("500..200".parse::<SizeSpec>().is_err());
    }

    #[test]
    fn zipf_is_skewed_and_uniform_is_not() {
        let mut zipf = KeyGen::new(KeySpec::Zipf { n: 100, s: 1.2 }, 1);
        let mut uniform = KeyGen::new(KeySpec::Uniform(100), 1);
        let (mut zipf_first, mut uniform_first) = (0, 0);
        for _ in 0..100_000 {
            zipf_first += u32::from(zipf.next_index() == Some(0));
            uniform_first += u32::from(uniform.next_index() == Some(0));
        }
        assert!(zipf_first > 20_000, "zipf key 0 drawn {zipf_first} times");
        assert!((500..1500).contains(&uniform_first), "uniform key 0 drawn {uniform_first} times");
        let mut rr = KeyGen::new(KeySpec::RoundRobin, 0);
        assert_eq!((0..3).map(|_| rr.next_index().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(KeyGen::new(KeySpec::None, 0).next_key(), None);
    }
}

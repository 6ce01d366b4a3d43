//! The typed values config keys hold: sizes ([`ByteSize`]), durations
//! ([`Seconds`], [`parse_duration`]), quotas ([`Quota`]), sandbox
//! identities ([`parse_ids`]), runners ([`RunnerKind`]) and grading
//! contracts ([`Contract`]), each parsed from its text with a message
//! that says what to write instead. No config section lives here.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A sandbox identity `uid:gid` or `uid` (gid = uid), numeric (names
/// cannot be looked up inside an arbitrary image before anything runs),
/// never 0.
pub fn parse_ids(s: &str) -> Result<(u32, u32), String> {
    // The old default (`user = "nobody"`) keeps working: nobody is 65534
    // in Debian, Alpine and busybox images alike.
    if matches!(s.trim(), "nobody" | "nobody:nogroup" | "nobody:nobody") {
        return Ok((65534, 65534));
    }
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    let num = |v: &str| v.trim().parse::<u32>().ok();
    match (num(u), num(g)) {
        (Some(0), _) | (_, Some(0)) => Err(format!(
            "`{s}` is root: job processes never run as uid or gid 0"
        )),
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(format!(
            "`{s}` is not a numeric `uid:gid` (user names other than `nobody` are not looked \
             up in the image); write e.g. \"65534:65534\""
        )),
    }
}

/// `N/window`, e.g. `5/24h`: at most N accepted submissions per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub count: u32,
    pub window: Duration,
}

impl FromStr for Quota {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, w) = s
            .split_once('/')
            .ok_or_else(|| format!("quota `{s}` is not of the form COUNT/WINDOW, e.g. 5/24h"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("quota count `{n}` is not a whole number"))?;
        let window = parse_duration(w.trim())?;
        if window.is_zero() {
            return Err("quota window must be longer than zero".into());
        }
        Ok(Quota { count, window })
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.window)
        )
    }
}

/// A number of bytes written as `1MiB`, `512k`, `2 GB` or a plain integer.
/// Parsed by hand: no size crate is in Cargo.toml, and its units and
/// messages are part of the config format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. 1MiB, 512KiB or 1048576"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" | "ki" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" | "mi" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" | "gi" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" | "ti" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}`; use B, KiB, MiB, GiB (or kB, MB, GB)"
                ));
            }
        };
        let v = num * mult as f64;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
            return Err(format!("size `{s}` is out of range"));
        }
        Ok(ByteSize(v as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if b >= m && b % m == 0 {
                return write!(f, "{}{}", b / m, unit);
            }
        }
        write!(f, "{b}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A duration written as `120s`, `5m`, `24h`, `1h 30m` or a plain number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

impl Seconds {
    pub fn get(self) -> Duration {
        self.0
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 120s, 5m or 24h"))
}

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Seconds)
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Seconds(Duration::from_secs(n))),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quota {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Quota {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    Auto,
    Docker,
    Native,
    Slurm,
    None,
}

/// Which grading contract a job follows (`[grader] contract`, per
/// assignment `contract`).
///
/// - `stdout` (gitlab-ag's): `test_all` runs in the student's workspace with
///   the test files laid over it (read-only to the job) and the grade is the
///   last `<summary>` block of its stdout.
/// - `trusted`: `test_all` (the harness) runs as a harness identity in its
///   own copy of the test tree; student code runs only through
///   `run-as-student`, as a student identity, in the workspace (the
///   student's tree with the tests' `public/` laid over it); the grade is
///   `results.json` in `$LABGRADER_RESULTS`, which only the harness can
///   write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Contract {
    #[default]
    Stdout,
    Trusted,
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Contract::Stdout => "stdout",
            Contract::Trusted => "trusted",
        })
    }
}

impl FromStr for Contract {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(Contract::Stdout),
            "trusted" => Ok(Contract::Trusted),
            other => Err(format!(
                "unknown contract `{other}`; use `stdout` or `trusted`"
            )),
        }
    }
}

impl fmt::Display for RunnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunnerKind::Auto => "auto",
            RunnerKind::Docker => "docker",
            RunnerKind::Native => "native",
            RunnerKind::Slurm => "slurm",
            RunnerKind::None => "none",
        })
    }
}

impl FromStr for RunnerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "docker" => Ok(Self::Docker),
            "native" => Ok(Self::Native),
            "slurm" => Ok(Self::Slurm),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown runner `{other}`; expected docker, native, slurm, none or auto"
            )),
        }
    }
}

//! What link to emulate: `--network "rtt=2ms,jitter=0.3ms,loss=0.0001%"`
//! (also `rate=100mbit`), a preset name (`financial-backbone`), or a preset
//! followed by overrides (`financial-backbone,loss=1%`). The same text in
//! the scenario file's `network` key. Unknown keys are rejected by name.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A link: delay, jitter and loss applied to every packet between the load
/// generator and the target, both directions.
///
/// - `rtt` is the round trip the link adds: each direction holds a packet
///   `rtt / 2` on average.
/// - `jitter` is the standard deviation of that round trip: each direction
///   draws its delay from a normal distribution with σ = `jitter / √2`
///   (two independent directions add up to σ = `jitter`), truncated at 0,
///   and never releases a packet before the previous one of its flow
///   (5-tuple), so order is kept per flow.
/// - `loss` is the probability that a packet is dropped, each direction,
///   independently per packet.
/// - `rate` (optional) is the capacity of each direction in bits/s: a
///   packet is serialized after the previous one (netem's `rate`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    #[serde(with = "ns_ms")]
    pub rtt: Duration,
    #[serde(with = "ns_ms")]
    pub jitter: Duration,
    /// Drop probability per packet and direction, 0..=1 (text: a percentage).
    pub loss: f64,
    /// Capacity of each direction, bits per second; `None` = unlimited.
    pub rate_bps: Option<u64>,
}

/// The admission standard's "financial backbone": 2 ms RTT, ± 0.3 ms, 0.0001 % loss.
pub const FINANCIAL_BACKBONE: NetworkSpec = NetworkSpec {
    rtt: Duration::from_millis(2),
    jitter: Duration::from_micros(300),
    loss: 0.000_001,
    rate_bps: None,
};

/// Preset names and what they stand for.
pub const PRESETS: &[(&str, NetworkSpec)] = &[("financial-backbone", FINANCIAL_BACKBONE)];

/// Longest RTT or jitter accepted (a typo like `rtt=2s` is still allowed).
const MAX_DELAY: Duration = Duration::from_secs(10);

impl NetworkSpec {
    /// A link that adds nothing (rtt 0, loss 0): a mechanism for partitions
    /// when no `--network` was asked for.
    pub const fn transparent() -> NetworkSpec {
        NetworkSpec {
            rtt: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rate_bps: None,
        }
    }

    /// Mean one-way delay (`rtt / 2`).
    pub fn one_way_mean(&self) -> Duration {
        self.rtt / 2
    }

    /// Standard deviation of one direction's delay (`jitter / √2`).
    pub fn one_way_sigma(&self) -> Duration {
        self.jitter.div_f64(std::f64::consts::SQRT_2)
    }

    /// Parses the `--network` text; the error is one sentence saying what to write.
    pub fn parse(text: &str) -> Result<NetworkSpec, String> {
        let example = "write e.g. --network \"rtt=2ms,jitter=0.3ms,loss=0.0001%\" or --network financial-backbone";
        let mut spec = NetworkSpec::transparent();
        let mut seen: Vec<&str> = Vec::new();
        let parts: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(format!("--network is empty: {example}"));
        }
        for (i, part) in parts.iter().enumerate() {
            let Some((key, value)) = part.split_once('=') else {
                match PRESETS.iter().find(|(n, _)| *n == *part) {
                    Some((_, p)) if i == 0 => {
                        spec = *p;
                        continue;
                    }
                    Some(_) => {
                        return Err(format!(
                            "--network: the preset `{part}` must come first, before key=value overrides"
                        ))
                    }
                    None => {
                        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                        return Err(format!(
                            "--network: `{part}` is neither key=value nor a preset ({}): {example}",
                            names.join(", ")
                        ));
                    }
                }
            };
            let (key, value) = (key.trim(), value.trim());
            if seen.contains(&key) {
                return Err(format!("--network: `{key}` is given twice: give it once"));
            }
            seen.push(key);
            match key {
                "rtt" => spec.rtt = parse_delay(key, value)?,
                "jitter" => spec.jitter = parse_delay(key, value)?,
                "loss" => spec.loss = parse_loss(value)?,
                "rate" => spec.rate_bps = Some(parse_bitrate(value)?),
                other => {
                    return Err(format!(
                    "--network: unknown key `{other}`: use rtt, jitter, loss or rate ({example})"
                ))
                }
            }
        }
        Ok(spec)
    }
}

/// The canonical text (`rtt=2ms,jitter=0.3ms,loss=0.0001%[,rate=…bit]`);
/// parsing it gives the same spec back.
impl std::fmt::Display for NetworkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| num(d.as_nanos() as f64 / 1e6);
        write!(
            f,
            "rtt={}ms,jitter={}ms,loss={}%",
            ms(self.rtt),
            ms(self.jitter),
            num(self.loss * 100.0)
        )?;
        if let Some(r) = self.rate_bps {
            write!(f, ",rate={r}bit")?;
        }
        Ok(())
    }
}

/// A number as people write it: 12 significant digits at most, no
/// trailing zeros (`0.0001`, not `0.00009999999999999999`).
fn num(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let digits = (11 - x.abs().log10().floor() as i32).clamp(0, 20) as usize;
    let s = format!("{x:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `2ms`, `0.3ms`, `300us` (or `µs`), `1s`, `0`: a unit is required.
fn parse_delay(key: &str, v: &str) -> Result<Duration, String> {
    let bad =
        || format!("--network: {key}=`{v}` is not a delay: write e.g. {key}=2ms, {key}=300us");
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let unit_ns = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "" if n == 0.0 => 0.0,
        _ => return Err(bad()),
    };
    let d = Duration::try_from_secs_f64(n * unit_ns / 1e9).map_err(|_| bad())?;
    if d > MAX_DELAY {
        return Err(format!(
            "--network: {key}=`{v}` is longer than {}s: give a shorter delay",
            MAX_DELAY.as_secs()
        ));
    }
    Ok(d)
}

/// `0.0001%` (a percentage, 0..100).
fn parse_loss(v: &str) -> Result<f64, String> {
    let bad =
        || format!("--network: loss=`{v}` is not a percentage: write e.g. loss=0.0001% or loss=1%");
    let num = v.strip_suffix('%').ok_or_else(bad)?.trim();
    let p: f64 = num.parse().map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("--network: loss=`{v}` must be between 0% and 100%"));
    }
    Ok(p / 100.0)
}

/// `100mbit`, `1gbit`, `512kbit`, `64000bit` (bits per second, tc's units).
fn parse_bitrate(v: &str) -> Result<u64, String> {
    let bad = || {
        format!("--network: rate=`{v}` is not a bit rate: write e.g. rate=100mbit or rate=1gbit")
    };
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return Err(bad()),
    };
    let bps = n * mult;
    if !(1000.0..=1e12).contains(&bps) {
        return Err(format!(
            "--network: rate=`{v}` must be between 1kbit and 1000gbit"
        ));
    }
    Ok(bps as u64)
}

/// Durations as milliseconds (f64) in JSON.
mod ns_ms {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_nanos() as f64 / 1e6)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        let ms = <f64 as serde::Deserialize>::deserialize(d)?;
        std::time::Duration::try_from_secs_f64(ms / 1e3).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_standard_link_and_the_preset() {
        let s = NetworkSpec::parse("rtt=2ms,jitter=0.3ms,loss=0.0001%").unwrap();
        assert_eq!(s.rtt, Duration::from_millis(2));
        assert_eq!(s.jitter, Duration::from_micros(300));
        assert!((s.loss - 1e-6).abs() < 1e-12);
        assert_eq!(s.rate_bps, None);
        assert_eq!(NetworkSpec::parse("financial-backbone").unwrap(), s);
        assert_eq!(s.to_string(), "rtt=2ms,jitter=0.3ms,loss=0.0001%");
        let o = NetworkSpec::parse("financial-backbone, loss=1%").unwrap();
        assert_eq!((o.rtt, o.loss), (Duration::from_millis(2), 0.01));
        let r = NetworkSpec::parse("rtt=500us,rate=100mbit").unwrap();
        assert_eq!(r.rtt, Duration::from_micros(500));
        assert_eq!(r.rate_bps, Some(100_000_000));
        assert_eq!(r.jitter, Duration::ZERO);
        assert_eq!(s.one_way_mean(), Duration::from_millis(1));
        let sigma = s.one_way_sigma().as_nanos() as f64;
        assert!((sigma - 212_132.0).abs() < 1.0, "{sigma}");
    }

    #[test]
    fn bad_input_is_one_sentence_naming_the_problem() {
        let e = |t: &str| NetworkSpec::parse(t).unwrap_err();
        assert!(e("rtt=2ms,delay=1ms").contains("unknown key `delay`"));
        assert!(e("rtt=2").contains("rtt=`2` is not a delay"));
        assert!(e("loss=1").contains("percentage"));
        assert!(e("loss=101%").contains("between 0% and 100%"));
        assert!(e("rtt=1ms,rtt=2ms").contains("twice"));
        assert!(e("finance").contains("preset"));
        assert!(e("rtt=1ms,financial-backbone").contains("must come first"));
        assert!(e("").contains("empty"));
        assert!(e("rate=fast").contains("bit rate"));
        assert!(e("rtt=20s").contains("shorter"));
        for t in ["rtt=2ms,delay=1ms", "loss=1", "", "rate=fast"] {
            assert!(!e(t).contains('\n'));
        }
    }

    proptest::proptest! {
        #[test]
        fn canonical_text_round_trips(rtt_us in 0u64..10_000_000, jit_us in 0u64..1_000_000, loss_ppm in 0u64..=1_000_000, rate in proptest::option::of(1000u64..1_000_000_000)) {
            let s = NetworkSpec {
                rtt: Duration::from_micros(rtt_us),
                jitter: Duration::from_micros(jit_us),
                loss: loss_ppm as f64 / 1e6,
                rate_bps: rate,
            };
            let back = NetworkSpec::parse(&s.to_string()).unwrap();
            proptest::prop_assert!((back.rtt.as_nanos() as i128 - s.rtt.as_nanos() as i128).abs() <= 1);
            proptest::prop_assert!((back.jitter.as_nanos() as i128 - s.jitter.as_nanos() as i128).abs() <= 1);
            proptest::prop_assert!((back.loss - s.loss).abs() < 1e-12);
            proptest::prop_assert_eq!(back.rate_bps, s.rate_bps);
        }

        #[test]
        fn arbitrary_text_never_panics(t in "\\PC{0,40}", u in "[a-z=,.%0-9 -]{0,40}") {
            let _ = NetworkSpec::parse(&t);
            let _ = NetworkSpec::parse(&u);
        }
    }
}

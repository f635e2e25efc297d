//! pprof's `profile.proto` (github.com/google/pprof/proto/profile.proto):
//! the handful of messages pushscope writes, encoded with prost and
//! gzipped, so `go tool pprof` reads the profiles. Locations are per
//! function (the stacks are symbolized already: `has_functions`).

use super::symbolize::Frame;
use std::collections::HashMap;
use std::io::Write;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// What the sample values mean: (type, unit) pairs, the last one is what
/// `pprof -top` shows by default.
pub struct Kind<'a> {
    pub sample_types: &'a [(&'a str, &'a str)],
    pub period_type: (&'a str, &'a str),
    pub period: i64,
}

#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    profile: Profile,
    locations: HashMap<Frame, u64>,
    mappings: HashMap<String, u64>,
}

impl Builder {
    fn s(&mut self, v: &str) -> i64 {
        if let Some(id) = self.string_ids.get(v) {
            return *id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(v.to_string());
        self.string_ids.insert(v.to_string(), id);
        id
    }

    fn location(&mut self, f: &Frame) -> u64 {
        if let Some(id) = self.locations.get(f) {
            return *id;
        }
        let mapping_id = match self.mappings.get(&f.module) {
            Some(id) => *id,
            None => {
                let id = self.profile.mapping.len() as u64 + 1;
                let filename = self.s(&f.module);
                self.profile.mapping.push(Mapping {
                    id,
                    filename,
                    has_functions: true,
                });
                self.mappings.insert(f.module.clone(), id);
                id
            }
        };
        let id = self.profile.location.len() as u64 + 1;
        let name = self.s(&f.name);
        let filename = self.s(&f.module);
        self.profile.function.push(Function {
            id,
            name,
            system_name: name,
            filename,
        });
        self.profile.location.push(Location {
            id,
            mapping_id,
            line: vec![Line { function_id: id }],
        });
        self.locations.insert(f.clone(), id);
        id
    }
}

/// One sample: frames root first, values, string labels.
pub type Stack<'a> = (Vec<Frame>, Vec<i64>, Vec<(&'a str, String)>);

/// Encodes `stacks` (frames root first, values in `kind.sample_types`
/// order, optional string labels) as a gzipped profile.proto.
pub fn encode(kind: &Kind<'_>, stacks: &[Stack<'_>], duration_ns: i64, time_ns: i64) -> Vec<u8> {
    let mut b = Builder::default();
    b.s("");
    let sample_type = kind
        .sample_types
        .iter()
        .map(|(t, u)| ValueType {
            r#type: b.s(t),
            unit: b.s(u),
        })
        .collect();
    b.profile.sample_type = sample_type;
    b.profile.period_type = Some(ValueType {
        r#type: b.s(kind.period_type.0),
        unit: b.s(kind.period_type.1),
    });
    b.profile.period = kind.period;
    b.profile.duration_nanos = duration_ns;
    b.profile.time_nanos = time_ns;
    for (frames, values, labels) in stacks {
        let location_id = frames.iter().rev().map(|f| b.location(f)).collect();
        let label = labels
            .iter()
            .map(|(k, v)| Label {
                key: b.s(k),
                str: b.s(v),
            })
            .collect();
        b.profile.sample.push(Sample {
            location_id,
            value: values.clone(),
            label,
        });
    }
    b.profile.string_table = std::mem::take(&mut b.strings);
    let raw = prost::Message::encode_to_vec(&b.profile);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).expect("writing to a Vec cannot fail");
    gz.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::io::Read;

    #[test]
    fn round_trips_through_gzip_and_prost() {
        let f = |n: &str| Frame {
            name: n.into(),
            module: "bin".into(),
        };
        let kind = Kind {
            sample_types: &[("samples", "count"), ("cpu", "nanoseconds")],
            period_type: ("cpu", "nanoseconds"),
            period: 10_101_010,
        };
        let gz = encode(
            &kind,
            &[
                (vec![f("main"), f("burn")], vec![3, 30], vec![]),
                (
                    vec![f("main"), f("idle")],
                    vec![1, 10],
                    vec![("kind", "lock".into())],
                ),
            ],
            1_000_000_000,
            0,
        );
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        let p = Profile::decode(&raw[..]).unwrap();
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.function.len(), 3);
        // leaf first
        let leaf = p.sample[0].location_id[0];
        let fname = p.function[leaf as usize - 1].name;
        assert_eq!(p.string_table[fname as usize], "burn");
        assert_eq!(p.sample[1].label.len(), 1);
    }
}

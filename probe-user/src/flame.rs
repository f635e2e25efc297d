//! lifecycle.folded + lifecycle.svg: where connection *setup* time goes,
//! phase by phase, as folded stacks (µs summed over connections) rendered
//! by inferno. The TLS handshake is split by whose turn it was (the
//! target's work vs waiting for the client). The rest of each connection's
//! lifetime is left out: it would dwarf setup (hours against milliseconds)
//! and is reported as the `lifetime` phase instead.

use crate::lifecycle::FlameSums;
use std::{fs::File, io::BufWriter, path::Path};

/// Folded stacks, one line per phase with time; empty phases are left out.
pub fn folded(s: &FlameSums) -> String {
    let rows = [
        ("setup;accept_wait", s.accept_wait),
        ("setup;tls_handshake;target_turns", s.tls_target_turns),
        ("setup;tls_handshake;client_turns", s.tls_peer_turns),
        ("setup;ws_upgrade", s.ws_upgrade),
        ("setup;first_push", s.first_push),
    ];
    let mut out = String::new();
    for (stack, us) in rows {
        if us > 0 {
            out.push_str(&format!("{stack} {us}\n"));
        }
    }
    out
}

/// Writes lifecycle.folded and lifecycle.svg into `dir`.
pub fn write(dir: &Path, s: &FlameSums) -> std::io::Result<()> {
    let text = folded(s);
    std::fs::write(dir.join("lifecycle.folded"), &text)?;
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = "pushscope: where connection setup time goes (µs, summed)".to_string();
    opts.count_name = "µs".to_string();
    let svg = BufWriter::new(File::create(dir.join("lifecycle.svg"))?);
    if text.is_empty() {
        // inferno refuses empty input; an explicit empty graph says "no data".
        return inferno::flamegraph::from_lines(&mut opts, ["no_connections 1"], svg)
            .map_err(std::io::Error::other);
    }
    inferno::flamegraph::from_lines(&mut opts, text.lines(), svg).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_phases_and_renders_svg() {
        let s = FlameSums {
            accept_wait: 10,
            tls_target_turns: 3,
            tls_peer_turns: 0,
            ws_upgrade: 5,
            first_push: 7,
            rest_of_lifetime: 100_000_000,
        };
        let f = folded(&s);
        assert_eq!(
            f,
            "setup;accept_wait 10\nsetup;tls_handshake;target_turns 3\n\
             setup;ws_upgrade 5\nsetup;first_push 7\n",
            "lifetime stays out of the setup graph"
        );
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &s).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("lifecycle.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("accept_wait"));
    }
}

//! lifecycle.folded + lifecycle.svg: where connection time goes, phase by
//! phase, as folded stacks (µs summed over connections) rendered by inferno.

use crate::lifecycle::FlameSums;
use std::{fs::File, io::BufWriter, path::Path};

/// Folded stacks, one line per phase with time; empty phases are left out.
pub fn folded(s: &FlameSums) -> String {
    let rows = [
        ("connection;setup;accept_wait", s.accept_wait),
        ("connection;setup;tls_handshake", s.tls_handshake),
        ("connection;setup;ws_upgrade", s.ws_upgrade),
        ("connection;setup;first_push", s.first_push),
        ("connection;rest_of_lifetime", s.rest_of_lifetime),
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
    opts.title = "pushscope: where connection time goes (µs, summed)".to_string();
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
            tls_handshake: 0,
            ws_upgrade: 5,
            first_push: 7,
            rest_of_lifetime: 100,
        };
        let f = folded(&s);
        assert_eq!(
            f,
            "connection;setup;accept_wait 10\nconnection;setup;ws_upgrade 5\n\
             connection;setup;first_push 7\nconnection;rest_of_lifetime 100\n"
        );
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &s).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("lifecycle.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("accept_wait"));
    }
}

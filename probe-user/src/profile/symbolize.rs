//! Addresses to function names with blazesym: user addresses through the
//! target's /proc/PID/maps (ELF symbols, DWARF, Rust and C++ demangling,
//! Go symbol tables, shared libraries), kernel addresses through
//! /proc/kallsyms. Nothing is fetched (no debuginfod). Results are cached
//! per (tgid, address) so later stages only resolve new addresses.

use blazesym::symbolize::{
    source::{Kernel, Process, Source},
    Input, Symbolized, Symbolizer,
};
use blazesym::{MaybeDefault, Pid};
use std::collections::HashMap;
use std::sync::Arc;

/// One frame of a symbolized stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Frame {
    /// Function name (demangled), or `0x…` when unknown.
    pub name: String,
    /// File the function lives in (basename), `[kernel]`, or `[unknown]`.
    pub module: String,
}

impl Frame {
    pub fn pseudo(name: &str) -> Frame {
        Frame {
            name: name.to_string(),
            module: String::new(),
        }
    }
}

/// Frames resolved so far. The blazesym `Symbolizer` (not `Send`: it
/// shares parsed files through `Rc`) lives only while a stage is being
/// resolved ([`Symbols::session`]), so a `Profiler` can move between
/// threads; addresses seen in earlier stages come from this cache.
#[derive(Default)]
pub struct Symbols {
    user: HashMap<(u32, u64), Arc<Frame>>,
    kernel: HashMap<u64, Arc<Frame>>,
}

/// A resolving session: the cache plus a symbolizer created on first need.
pub struct Session<'a> {
    cache: &'a mut Symbols,
    sym: Option<Symbolizer>,
}

fn unknown(addr: u64, module: &str) -> Frame {
    Frame {
        name: format!("{addr:#x}"),
        module: module.to_string(),
    }
}

fn to_frame(s: &Symbolized<'_>, addr: u64, kernel: bool) -> Frame {
    match s {
        Symbolized::Sym(sym) => Frame {
            name: sym.name.to_string(),
            module: if kernel {
                "[kernel]".to_string()
            } else {
                sym.module
                    .as_ref()
                    .and_then(|m| {
                        std::path::Path::new(m)
                            .file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                    })
                    .unwrap_or_else(|| "[unknown]".to_string())
            },
        },
        Symbolized::Unknown(r) => {
            log::debug!("{addr:#x}: {r}");
            unknown(addr, if kernel { "[kernel]" } else { "[unknown]" })
        }
    }
}

/// Return addresses point after the call: look up the call itself so a
/// call that ends a function is not charged to the next one.
fn lookup_addr(i: usize, ip: u64) -> u64 {
    if i == 0 {
        ip
    } else {
        ip.saturating_sub(1)
    }
}

impl Symbols {
    pub fn session(&mut self) -> Session<'_> {
        Session {
            cache: self,
            sym: None,
        }
    }
}

impl Session<'_> {
    fn sym(&mut self) -> &Symbolizer {
        self.sym.get_or_insert_with(|| {
            Symbolizer::builder()
                .enable_demangling(true)
                .enable_code_info(false)
                .enable_inlined_fns(false)
                .build()
        })
    }

    /// Resolves `missing` from `src`; one unreadable file fails a batch,
    /// so a failed batch is retried address by address.
    fn resolve(&mut self, src: &Source<'_>, missing: &[u64], kernel: bool) -> Vec<Frame> {
        let dflt = if kernel { "[kernel]" } else { "[unknown]" };
        match self.sym().symbolize(src, Input::AbsAddr(missing)) {
            Ok(syms) => missing
                .iter()
                .zip(syms.iter())
                .map(|(a, s)| to_frame(s, *a, kernel))
                .collect(),
            Err(e) => {
                log::debug!("symbolizing {} addresses: {e}", missing.len());
                missing
                    .iter()
                    .map(
                        |a| match self.sym().symbolize_single(src, Input::AbsAddr(*a)) {
                            Ok(s) => to_frame(&s, *a, kernel),
                            Err(_) => unknown(*a, dflt),
                        },
                    )
                    .collect()
            }
        }
    }

    /// Frames of a user stack of process `tgid` (`ips` leaf first; the
    /// result keeps that order).
    pub fn user(&mut self, tgid: u32, ips: &[u64]) -> Vec<Arc<Frame>> {
        let missing: Vec<u64> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| lookup_addr(i, *ip))
            .filter(|a| !self.cache.user.contains_key(&(tgid, *a)))
            .collect();
        if !missing.is_empty() {
            let src = Source::Process(Process::new(Pid::from(tgid)));
            let frames = self.resolve(&src, &missing, false);
            for (a, f) in missing.iter().zip(frames) {
                self.cache.user.insert((tgid, *a), Arc::new(f));
            }
        }
        ips.iter()
            .enumerate()
            .map(|(i, ip)| self.cache.user[&(tgid, lookup_addr(i, *ip))].clone())
            .collect()
    }

    /// Frames of a kernel stack (`ips` leaf first; same order back).
    pub fn kernel(&mut self, ips: &[u64]) -> Vec<Arc<Frame>> {
        let missing: Vec<u64> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| lookup_addr(i, *ip))
            .filter(|a| !self.cache.kernel.contains_key(a))
            .collect();
        if !missing.is_empty() {
            let src = Source::Kernel(Kernel {
                vmlinux: MaybeDefault::None,
                debug_syms: false,
                ..Default::default()
            });
            let frames = self.resolve(&src, &missing, true);
            for (a, f) in missing.iter().zip(frames) {
                self.cache.kernel.insert(*a, Arc::new(f));
            }
        }
        ips.iter()
            .enumerate()
            .map(|(i, ip)| self.cache.kernel[&lookup_addr(i, *ip)].clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn here() -> u64 {
        here as *const () as usize as u64
    }

    #[test]
    fn symbolizes_own_function() {
        let mut s = Symbols::default();
        let f = s.session().user(std::process::id(), &[here()]);
        assert!(f[0].name.contains("here"), "{:?}", f[0]);
    }
}

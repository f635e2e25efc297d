//! `partition`: every packet between load generator and target dropped,
//! both ways, for the fault's duration, by the emulated link (the load
//! generator's namespace routed through pushscope's forwarder; a run with
//! a partition fault and no `--network` gets a transparent link). The
//! clients notice by their heartbeats, reconnect and resume: the outcome
//! (detection, recovery, resumed messages, loss) comes from [`super::events`].

use super::{FaultEnv, Injector, PartitionSwitch};
use std::sync::Arc;

pub struct Partition {
    link: Arc<dyn PartitionSwitch>,
    on: bool,
}

impl Partition {
    pub fn new(index: usize, env: &FaultEnv) -> Result<Partition, String> {
        let link = env.link.clone().ok_or_else(|| {
            format!(
                "fault {} (partition) needs the emulated link between load generator and target, which this run has not set up",
                index + 1
            )
        })?;
        Ok(Partition { link, on: false })
    }
}

impl Injector for Partition {
    fn start(&mut self) -> Result<(), String> {
        self.link.set_partitioned(true)?;
        self.on = true;
        Ok(())
    }

    fn end(&mut self) -> Result<(), String> {
        if self.on {
            self.link.set_partitioned(false)?;
            self.on = false;
        }
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

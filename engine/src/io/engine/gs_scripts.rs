//! The host's deactivate scripts (docs/group-services.md §6.5) handed to the
//! [`crate::io::scripts::ScriptRunner`], and their results handed back to the host.

use super::*;
use crate::io::scripts::RunAs;

impl Engine {
    /// Starts the scripts the host asks for, reports those that ended. Returns how
    /// many things happened.
    pub(super) fn run_scripts(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(run) = self.host.poll_gs_script() {
            n += 1;
            let run_as = self.ipc.client_cred(run.client).map(|c| RunAs {
                uid: c.uid,
                gid: c.gid,
            });
            if let Err(run) = self.scripts.start(run, run_as) {
                tracing::warn!(script = %run.script, "deactivate script cannot run");
                self.host.gs_script_done(now, &run, false);
            }
        }
        while let Some((run, ok)) = self.scripts.poll_done() {
            n += 1;
            self.host.gs_script_done(now, &run, ok);
        }
        n
    }
}

//! What the kernel offers io_uring, probed at start: the engine needs Linux 6.0
//! (multishot `recvmsg` with provided buffer rings) and says so rather than fall back.

use super::*;

/// What the kernel offers, probed at start (and logged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFeatures {
    pub release: String,
    /// Major and minor version.
    pub version: (u32, u32),
    pub ext_arg: bool,
    pub nodrop: bool,
    pub fast_poll: bool,
    pub recvmsg: bool,
    pub sendmsg: bool,
    pub read: bool,
}

impl KernelFeatures {
    /// Multishot `recvmsg` with provided buffer rings needs Linux 6.0.
    pub fn multishot_recvmsg(&self) -> bool {
        self.version >= (6, 0)
    }

    fn probe(ring: &IoUring) -> std::io::Result<KernelFeatures> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok());
        let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let params = ring.params();
        Ok(KernelFeatures {
            release,
            version,
            ext_arg: params.is_feature_ext_arg(),
            nodrop: params.is_feature_nodrop(),
            fast_poll: params.is_feature_fast_poll(),
            recvmsg: probe.is_supported(opcode::RecvMsg::CODE),
            sendmsg: probe.is_supported(opcode::SendMsg::CODE),
            read: probe.is_supported(opcode::Read::CODE),
        })
    }

    /// A clear error for the first missing feature (no fallbacks: each of these is
    /// required and has been in mainline since 6.0).
    fn check(&self) -> Result<(), EngineError> {
        let missing = [
            (self.recvmsg, "IORING_OP_RECVMSG (5.3)"),
            (self.sendmsg, "IORING_OP_SENDMSG (5.3)"),
            (self.read, "IORING_OP_READ (5.6)"),
            (self.nodrop, "IORING_FEAT_NODROP (5.5)"),
            (self.fast_poll, "IORING_FEAT_FAST_POLL (5.7)"),
            (self.ext_arg, "IORING_FEAT_EXT_ARG, timed waits (5.11)"),
            (
                self.multishot_recvmsg(),
                "multishot recvmsg with provided buffer rings (6.0)",
            ),
        ];
        match missing.iter().find(|(ok, _)| !ok) {
            None => Ok(()),
            Some((_, what)) => Err(EngineError::Kernel(format!(
                "Linux {} lacks {what}; ringcastd needs Linux 6.0 or later",
                self.release
            ))),
        }
    }
}

/// The io_uring instance and what its kernel offers (checked: the engine needs it).
pub(super) fn open_io_uring(
    config: &DaemonConfig,
) -> Result<(IoUring, KernelFeatures), EngineError> {
    let s = &config.settings;
    let mut builder = IoUring::builder();
    builder.setup_cqsize(SQ_ENTRIES * 4);
    if s.sqpoll {
        builder.setup_sqpoll(s.sqpoll_idle_ms);
    }
    let ring = builder.build(SQ_ENTRIES).map_err(|e| EngineError::Io {
        what: if e.raw_os_error() == Some(libc::EPERM) {
            "io_uring_setup (disabled by kernel.io_uring_disabled, or SQPOLL not permitted)".into()
        } else {
            "io_uring_setup".into()
        },
        source: e,
    })?;
    let features = KernelFeatures::probe(&ring).map_err(io_error("io_uring probe"))?;
    tracing::info!(
        kernel = %features.release,
        ext_arg = features.ext_arg,
        nodrop = features.nodrop,
        fast_poll = features.fast_poll,
        multishot_recvmsg = features.multishot_recvmsg(),
        sqpoll = s.sqpoll,
        "io_uring features"
    );
    features.check()?;
    Ok((ring, features))
}

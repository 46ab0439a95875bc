//! What the kernel's io_uring offers, probed once per process. A missing or disabled
//! io_uring is a start-up error that says why and how to fix it.

use io_uring::{opcode, IoUring, Probe};
use std::sync::OnceLock;

#[derive(Clone, Debug)]
pub struct KernelFeatures {
    pub kernel_release: String,
    pub single_issuer: bool,
    pub coop_taskrun: bool,
    pub defer_taskrun: bool,
    pub msg_ring: bool,
    pub splice: bool,
    pub send_zc: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("io_uring is disabled by sysctl (kernel.io_uring_disabled = {0}); allow it with `sysctl -w kernel.io_uring_disabled=0`")]
    DisabledBySysctl(String),
    #[error("io_uring_setup is not permitted ({0}); a container seccomp profile or an LSM blocks it — run with a seccomp profile that allows io_uring_setup/io_uring_enter/io_uring_register, or check kernel.io_uring_disabled and io_uring_group")]
    NotPermitted(std::io::Error),
    #[error("this kernel has no io_uring ({0}); ringbroker needs Linux 5.10 or newer built with CONFIG_IO_URING")]
    Missing(std::io::Error),
    #[error("io_uring setup failed: {0}")]
    Other(std::io::Error),
    #[error("the kernel's io_uring lacks required operations: {0} (Linux 5.10+ needed)")]
    MissingOpcodes(String),
}

static FEATURES: OnceLock<Result<KernelFeatures, String>> = OnceLock::new();

impl KernelFeatures {
    /// Probes once; later calls return the cached answer.
    pub fn get() -> Result<KernelFeatures, String> {
        FEATURES
            .get_or_init(|| probe().map_err(|e| e.to_string()))
            .clone()
    }

    /// The same kernel with every optional feature turned off (the forced fallback path).
    pub fn without_optional(&self) -> KernelFeatures {
        KernelFeatures {
            single_issuer: false,
            coop_taskrun: false,
            defer_taskrun: false,
            msg_ring: false,
            send_zc: false,
            ..self.clone()
        }
    }

    /// Setup flags and optional opcodes in use, for the start-up log line.
    pub fn summary(&self) -> String {
        let mut on = Vec::new();
        for (name, present) in [
            ("SINGLE_ISSUER", self.single_issuer),
            ("COOP_TASKRUN", self.coop_taskrun),
            ("DEFER_TASKRUN", self.defer_taskrun),
            ("MSG_RING", self.msg_ring),
            ("SPLICE", self.splice),
            ("SEND_ZC", self.send_zc),
        ] {
            if present {
                on.push(name);
            }
        }
        on.join(",")
    }
}

fn setup_works(configure: impl FnOnce(&mut io_uring::Builder)) -> bool {
    let mut builder = IoUring::builder();
    configure(&mut builder);
    builder.build(4).is_ok()
}

pub fn probe() -> Result<KernelFeatures, ProbeError> {
    if let Ok(value) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if value.trim() == "2" {
            return Err(ProbeError::DisabledBySysctl(value.trim().to_string()));
        }
    }
    let ring = match IoUring::new(4) {
        Ok(r) => r,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOSYS) => ProbeError::Missing(e),
                Some(libc::EPERM) | Some(libc::EACCES) => ProbeError::NotPermitted(e),
                _ => ProbeError::Other(e),
            })
        }
    };
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(ProbeError::Other)?;
    let required = [
        ("ACCEPT", opcode::Accept::CODE),
        ("RECV", opcode::Recv::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("READ", opcode::Read::CODE),
        ("WRITE", opcode::Write::CODE),
        ("FSYNC", opcode::Fsync::CODE),
        ("TIMEOUT", opcode::Timeout::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ];
    let missing: Vec<&str> = required
        .iter()
        .filter(|(_, code)| !probe.is_supported(*code))
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(ProbeError::MissingOpcodes(missing.join(", ")));
    }
    // SAFETY: uname fills a zeroed utsname struct.
    let kernel_release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        libc::uname(&mut u);
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    Ok(KernelFeatures {
        kernel_release,
        single_issuer: setup_works(|b| {
            b.setup_single_issuer();
        }),
        coop_taskrun: setup_works(|b| {
            b.setup_coop_taskrun();
        }),
        defer_taskrun: setup_works(|b| {
            b.setup_single_issuer().setup_defer_taskrun();
        }),
        msg_ring: probe.is_supported(opcode::MsgRingData::CODE),
        splice: probe.is_supported(opcode::Splice::CODE),
        send_zc: probe.is_supported(opcode::SendZc::CODE),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_finds_the_basics() {
        let f = super::KernelFeatures::get().expect("io_uring must work on the test machine");
        assert!(!f.kernel_release.is_empty());
        let off = f.without_optional();
        assert!(!off.defer_taskrun && !off.msg_ring);
    }
}

//! CPU counters of a workload and every child it starts: the number of
//! instructions (user and kernel) it retired, which this VM repeats to a
//! fraction of a percent where wall time moves by ten. A syscall hook's
//! work runs in the task that made the call, so it is counted there.
//!
//! Each count opens its own counter: an inherited counter also follows
//! every child started while it is open (a live session's mcpwarden among
//! them), and a reset clears neither what reaped children added nor their
//! own counters.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER0` (64 bytes), the
/// fields this needs (linux/perf_event.h).
#[repr(C)]
#[derive(Default)]
struct Attr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit 0 `disabled`, bit 1 `inherit`, bit 6 `exclude_hv`.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_HARDWARE: u32 = 0;
const PERF_COUNT_HW_INSTRUCTIONS: u64 = 1;
const DISABLED: u64 = 1;
const INHERIT: u64 = 1 << 1;
const EXCLUDE_HV: u64 = 1 << 6;
// _IO('$', 0), _IO('$', 1).
const IOC_ENABLE: libc::c_ulong = 0x2400;
const IOC_DISABLE: libc::c_ulong = 0x2401;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// An instruction counter on this thread that also counts the children
/// it starts from now on (`inherit`), as each is reaped.
struct Instructions {
    fd: OwnedFd,
}

/// Instructions that `work` (which must wait for its children) retired,
/// its children's included. Fails where the VM exposes no hardware
/// counters.
pub fn instructions(work: &dyn Fn()) -> io::Result<u64> {
    let counter = Instructions::open()?;
    counter.ioctl(IOC_ENABLE)?;
    work();
    counter.ioctl(IOC_DISABLE)?;
    counter.read()
}

impl Instructions {
    /// Opens the counter, stopped.
    fn open() -> io::Result<Self> {
        let attr = Attr {
            kind: PERF_TYPE_HARDWARE,
            size: size_of::<Attr>() as u32,
            config: PERF_COUNT_HW_INSTRUCTIONS,
            flags: DISABLED | INHERIT | EXCLUDE_HV,
            ..Attr::default()
        };
        // SAFETY: a valid attr of the size it states; pid 0 (this
        // process), any CPU, no group, no flags.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &raw const attr,
                0,
                -1,
                -1,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { fd })
    }

    fn ioctl(&self, request: libc::c_ulong) -> io::Result<()> {
        // SAFETY: a perf event descriptor and an argument-less request.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), request, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The count: this thread's and its reaped children's.
    fn read(&self) -> io::Result<u64> {
        let mut value = 0u64;
        // SAFETY: reading the counter's one u64 into a u64.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&raw mut value).cast(),
                size_of::<u64>(),
            )
        };
        if n != size_of::<u64>() as isize {
            return Err(io::Error::last_os_error());
        }
        Ok(value)
    }
}

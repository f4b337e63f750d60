//! `/dev/kvm`: there, the right device, openable read-write by the runner user, the API QEMU
//! expects, nested virtualisation when asked for; with `--deep`, a guest that really runs.
//!
//! A device that answers ioctls can still be unable to run a guest (a paravirtualised KVM such as
//! `kvm_pvm` inside a cloud VM), which is why `--deep` runs a few guest instructions to `HLT`
//! through `KVM_RUN` (see [`deep_probe`]).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;

use super::as_user::{self, Identity, ProbeFailure};
use super::user::Resolved;
use super::{ticked, DoctorError, Environment, Family, Finding};
use crate::config::Config;

const F: Family = Family::Kvm;
/// `/dev/kvm` is misc device 10:232.
pub const KVM_MAJOR: u64 = 10;
pub const KVM_MINOR: u64 = 232;
/// `KVM_GET_API_VERSION` has returned 12 since Linux 2.6.22.
pub const KVM_API_VERSION: i64 = 12;

const KVMIO: u8 = 0xAE;
const KVM_GET_API_VERSION: libc::c_ulong = nix::request_code_none!(KVMIO, 0x00) as libc::c_ulong;
const KVM_CREATE_VM: libc::c_ulong = nix::request_code_none!(KVMIO, 0x01) as libc::c_ulong;
const KVM_CHECK_EXTENSION: libc::c_ulong = nix::request_code_none!(KVMIO, 0x03) as libc::c_ulong;
const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = nix::request_code_none!(KVMIO, 0x04) as libc::c_ulong;
const KVM_CREATE_VCPU: libc::c_ulong = nix::request_code_none!(KVMIO, 0x41) as libc::c_ulong;
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong =
    nix::request_code_write!(KVMIO, 0x46, std::mem::size_of::<UserMemoryRegion>()) as libc::c_ulong;
const KVM_RUN: libc::c_ulong = nix::request_code_none!(KVMIO, 0x80) as libc::c_ulong;

/// `KVM_EXIT_*` reasons the deep probe tells apart.
const KVM_EXIT_HLT: i64 = 5;
const KVM_EXIT_SHUTDOWN: i64 = 8;
const KVM_EXIT_FAIL_ENTRY: i64 = 9;
const KVM_EXIT_INTERNAL_ERROR: i64 = 17;

/// Capabilities QEMU refuses to start without (`kvm_required_capabilites` in `accel/kvm`, plus
/// the x86 list in `target/i386/kvm`), with their `KVM_CAP_*` numbers.
const REQUIRED_CAPS: &[(&str, i64)] = &[
    ("USER_MEMORY", 3),
    ("DESTROY_MEMORY_REGION_WORKS", 21),
    ("JOIN_MEMORY_REGIONS_WORKS", 30),
    ("INTERNAL_ERROR_DATA", 40),
    ("IOEVENTFD", 36),
    ("IOEVENTFD_ANY_LENGTH", 122),
];
const REQUIRED_CAPS_X86: &[(&str, i64)] = &[
    ("SET_TSS_ADDR", 4),
    ("EXT_CPUID", 7),
    ("MP_STATE", 14),
    ("IRQ_ROUTING", 25),
    ("MCE", 31),
    ("SET_IDENTITY_MAP_ADDR", 37),
    ("ADJUST_CLOCK", 39),
    ("VCPU_EVENTS", 41),
    ("DEBUGREGS", 50),
    ("X86_ROBUST_SINGLESTEP", 51),
    ("XSAVE", 55),
    ("SIGNAL_MSI", 77),
];
const CAP_NR_VCPUS: i64 = 9;
const CAP_MAX_VCPUS: i64 = 66;

/// `struct kvm_userspace_memory_region`.
#[repr(C)]
struct UserMemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

/// What the basic probe saw (as one user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProbe {
    /// `Err` when `open(O_RDWR)` failed.
    pub open: Result<(), Errno>,
    /// `KVM_GET_API_VERSION`.
    pub api_version: Result<i64, Errno>,
    /// `KVM_CREATE_VM` (the VM is closed again at once).
    pub create_vm: Result<(), Errno>,
    /// `KVM_CHECK_EXTENSION` per capability number.
    pub caps: Vec<(i64, i64)>,
}

fn all_caps() -> Vec<i64> {
    let mut caps: Vec<i64> = REQUIRED_CAPS.iter().map(|(_, n)| *n).collect();
    if cfg!(target_arch = "x86_64") {
        caps.extend(REQUIRED_CAPS_X86.iter().map(|(_, n)| *n));
    }
    caps.push(CAP_NR_VCPUS);
    caps.push(CAP_MAX_VCPUS);
    caps
}

fn from_raw(value: i64) -> Result<i64, Errno> {
    if value < 0 {
        Err(Errno::from_raw(-value as i32))
    } else {
        Ok(value)
    }
}

/// Open `device` as `identity` (or as doctor itself) and ask it the questions QEMU asks.
pub fn probe_device(
    device: &Path,
    identity: Option<&Identity>,
) -> Result<Result<DeviceProbe, ProbeFailure>, DoctorError> {
    let path = CString::new(device.as_os_str().as_bytes()).map_err(|_| DoctorError::NulInPath {
        path: device.to_path_buf(),
    })?;
    let caps = all_caps();
    let mut cap_numbers = [0i64; 24];
    for (slot, cap) in cap_numbers.iter_mut().zip(&caps) {
        *slot = *cap;
    }
    let count = caps.len().min(cap_numbers.len());
    let answer = as_user::run::<27>(identity, Duration::from_secs(5), move || {
        let mut out = [0i64; 27];
        let fd = as_user::raw_open(&path, libc::O_RDWR | libc::O_CLOEXEC);
        if fd < 0 {
            out[0] = fd;
            return out;
        }
        let fd = fd as libc::c_int;
        // SAFETY: ioctls on a descriptor we own; arguments are plain integers.
        unsafe {
            out[1] = ret(libc::ioctl(fd, KVM_GET_API_VERSION as _, 0));
            let vm = libc::ioctl(fd, KVM_CREATE_VM as _, 0);
            out[2] = ret(vm);
            if vm >= 0 {
                libc::close(vm);
            }
            for i in 0..count {
                out[3 + i] = ret(libc::ioctl(
                    fd,
                    KVM_CHECK_EXTENSION as _,
                    cap_numbers[i] as libc::c_ulong,
                ));
            }
            libc::close(fd);
        }
        out
    })?;
    Ok(answer.map(|out| DeviceProbe {
        open: from_raw(out[0]).map(|_| ()),
        api_version: from_raw(out[1]),
        create_vm: from_raw(out[2]).map(|_| ()),
        caps: caps
            .iter()
            .take(count)
            .enumerate()
            .map(|(i, cap)| (*cap, out[3 + i]))
            .collect(),
    }))
}

fn ret(value: libc::c_int) -> i64 {
    if value < 0 {
        -i64::from(Errno::last_raw())
    } else {
        i64::from(value)
    }
}

/// What running a guest to `HLT` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeepResult {
    /// The guest executed `hlt` and `KVM_RUN` returned `KVM_EXIT_HLT`.
    Halted,
    /// A step before `KVM_RUN` failed.
    Setup {
        step: &'static str,
        errno: Errno,
    },
    /// `KVM_RUN` itself failed.
    RunFailed(Errno),
    /// `KVM_RUN` returned with another exit reason (and its detail word).
    Exit {
        reason: i64,
        detail: i64,
    },
    Probe(ProbeFailure),
}

const DEEP_STEPS: [&str; 8] = [
    "open",
    "KVM_CREATE_VM",
    "mmap guest memory",
    "KVM_SET_USER_MEMORY_REGION",
    "KVM_CREATE_VCPU",
    "KVM_GET_VCPU_MMAP_SIZE",
    "mmap kvm_run",
    "KVM_RUN",
];

/// Run one guest instruction: a page at the top of the 4 GiB space whose reset-vector byte
/// (`0xfffffff0`, where an x86 vCPU starts in real mode) is `hlt` (`0xf4`). No register set-up is
/// needed, so nothing but the hardware (or paravirtual) path is tested.
pub fn deep_probe(
    device: &Path,
    identity: Option<&Identity>,
    timeout: Duration,
) -> Result<DeepResult, DoctorError> {
    let path = CString::new(device.as_os_str().as_bytes()).map_err(|_| DoctorError::NulInPath {
        path: device.to_path_buf(),
    })?;
    let answer = as_user::run::<4>(identity, timeout, move || deep_child(&path))?;
    let out = match answer {
        Ok(out) => out,
        Err(failure) => return Ok(DeepResult::Probe(failure)),
    };
    let step = out[0] as usize;
    let errno = Errno::from_raw(out[1] as i32);
    Ok(match step {
        0 if out[2] == KVM_EXIT_HLT => DeepResult::Halted,
        0 => DeepResult::Exit {
            reason: out[2],
            detail: out[3],
        },
        8 => DeepResult::RunFailed(errno),
        n => DeepResult::Setup {
            step: DEEP_STEPS.get(n.saturating_sub(1)).copied().unwrap_or("?"),
            errno,
        },
    })
}

/// The child side of [`deep_probe`]: `[failed step (1-based, 0 = ran), errno, exit reason,
/// detail]`. System calls only.
fn deep_child(path: &std::ffi::CStr) -> [i64; 4] {
    let fail = |step: i64| [step, i64::from(Errno::last_raw()), 0, 0];
    // SAFETY: system calls on descriptors and mappings this child owns; the guest page and the
    // kvm_run area are accessed within their mapped sizes.
    unsafe {
        let kvm = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if kvm < 0 {
            return fail(1);
        }
        let vm = libc::ioctl(kvm, KVM_CREATE_VM as _, 0);
        if vm < 0 {
            return fail(2);
        }
        let page = 0x1000usize;
        let mem = libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if mem == libc::MAP_FAILED {
            return fail(3);
        }
        // hlt at the reset vector, and hlt everywhere else too (a jump would land on one).
        std::ptr::write_bytes(mem.cast::<u8>(), 0xf4, page);
        let region = UserMemoryRegion {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0xffff_f000,
            memory_size: page as u64,
            userspace_addr: mem as u64,
        };
        if libc::ioctl(vm, KVM_SET_USER_MEMORY_REGION as _, &region) < 0 {
            return fail(4);
        }
        let vcpu = libc::ioctl(vm, KVM_CREATE_VCPU as _, 0);
        if vcpu < 0 {
            return fail(5);
        }
        let size = libc::ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE as _, 0);
        if size <= 0 {
            return fail(6);
        }
        let run = libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu,
            0,
        );
        if run == libc::MAP_FAILED {
            return fail(7);
        }
        if libc::ioctl(vcpu, KVM_RUN as _, 0) < 0 {
            return fail(8);
        }
        // struct kvm_run: exit_reason (u32) at offset 8, the exit's union at offset 32.
        let base = run.cast::<u8>();
        let reason = std::ptr::read_unaligned(base.add(8).cast::<u32>());
        let detail = std::ptr::read_unaligned(base.add(32).cast::<u64>());
        [0, 0, i64::from(reason), detail as i64]
    }
}

/// The kvm family.
pub fn check(
    cfg: Option<&Config>,
    env: &Environment,
    users: &[Resolved],
    deep: bool,
) -> Result<Vec<Finding>, DoctorError> {
    let wanted = cfg.and_then(|c| c.host.kvm);
    if wanted == Some(false) {
        return Ok(vec![Finding::skip(
            F,
            "kvm.node",
            "`[host] kvm = false`: jobs on this host do not use KVM",
        )]);
    }
    let required = wanted == Some(true);
    let cpu = CpuVirt::read(&env.proc_root, &env.sys_root);
    let mut findings = vec![cpu_finding(&cpu)];
    let Some(node) = node_finding(&env.kvm_device, required, &cpu, &mut findings) else {
        return Ok(findings);
    };
    findings.push(mode_finding(&env.kvm_device, &node));

    match probe_device(&env.kvm_device, None)? {
        Ok(probe) => findings.extend(api_findings(&env.kvm_device, &probe)),
        Err(failure) => findings.push(Finding::fail(
            F,
            "kvm.api",
            format!("cannot probe {}: {failure}", ticked(&env.kvm_device)),
            "look at `dmesg | grep -i kvm`",
        )),
    }
    for user in users {
        let Resolved::Found(identity) = user else {
            continue;
        };
        findings.push(open_finding(&env.kvm_device, &node, identity)?);
    }
    if cfg.is_some_and(|c| c.host.nested_virt) {
        findings.push(nested_finding(&env.sys_root, &cpu));
    }
    if deep {
        // As doctor itself: whether the runner user may open the device is kvm.open's business;
        // this asks whether the device can run a guest at all.
        findings.push(deep_finding(&env.kvm_device, None)?);
    }
    Ok(findings)
}

/// What `/proc/cpuinfo` and the loaded modules say about virtualisation support.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuVirt {
    pub vendor: Option<String>,
    pub vmx: bool,
    pub svm: bool,
    /// Loaded KVM modules (`kvm_intel`, `kvm_amd`, `kvm_pvm`, …).
    pub modules: Vec<String>,
}

impl CpuVirt {
    pub fn read(proc_root: &Path, sys_root: &Path) -> CpuVirt {
        let mut cpu = CpuVirt::default();
        if let Ok(text) = std::fs::read_to_string(proc_root.join("cpuinfo")) {
            for line in text.lines() {
                let Some((key, value)) = line.split_once(':') else {
                    continue;
                };
                match key.trim() {
                    "vendor_id" if cpu.vendor.is_none() => {
                        cpu.vendor = Some(value.trim().to_owned());
                    }
                    "flags" => {
                        let flags: Vec<&str> = value.split_whitespace().collect();
                        cpu.vmx |= flags.contains(&"vmx");
                        cpu.svm |= flags.contains(&"svm");
                    }
                    _ => {}
                }
            }
        }
        for module in ["kvm_intel", "kvm_amd", "kvm_pvm"] {
            if sys_root.join("module").join(module).exists() {
                cpu.modules.push(module.to_owned());
            }
        }
        cpu
    }

    fn module_hint(&self) -> String {
        if self.vmx {
            "modprobe kvm_intel (and add `kvm_intel` to /etc/modules-load.d/kvm.conf)".to_owned()
        } else if self.svm {
            "modprobe kvm_amd (and add `kvm_amd` to /etc/modules-load.d/kvm.conf)".to_owned()
        } else {
            "enable VT-x (Intel) or AMD-V/SVM in the firmware (BIOS/UEFI) setup; on a virtual machine, \
             ask its hypervisor to expose nested virtualisation"
                .to_owned()
        }
    }
}

fn cpu_finding(cpu: &CpuVirt) -> Finding {
    let modules = if cpu.modules.is_empty() {
        "no kvm module loaded".to_owned()
    } else {
        format!("modules {}", cpu.modules.join(", "))
    };
    if !cfg!(any(target_arch = "x86_64", target_arch = "x86")) {
        return Finding::pass(
            F,
            "kvm.cpu",
            format!("not x86 (no vmx/svm flag to check); {modules}"),
        );
    }
    let vendor = cpu.vendor.as_deref().unwrap_or("unknown vendor");
    if cpu.vmx || cpu.svm {
        let flag = if cpu.vmx { "vmx" } else { "svm" };
        Finding::pass(F, "kvm.cpu", format!("{vendor} with `{flag}`; {modules}"))
    } else if cpu.modules.iter().any(|m| m == "kvm_pvm") {
        Finding::warn(
            F,
            "kvm.cpu",
            format!(
                "{vendor} without `vmx`/`svm`; {modules}: a paravirtual KVM, stock guests may run very slowly or not at all"
            ),
            "`agentctl doctor --deep` runs a guest to `hlt` and starts the configured QEMU with `-cpu host`; for real hardware acceleration use a host (or VM type) that exposes VT-x/AMD-V",
        )
    } else {
        Finding::warn(
            F,
            "kvm.cpu",
            format!("{vendor} without `vmx`/`svm` in /proc/cpuinfo; {modules}"),
            cpu.module_hint(),
        )
    }
}

/// `kvm.node`: the device node exists and is char 10:232. Pushes its finding; returns the
/// metadata when the checks below can go on.
fn node_finding(
    device: &Path,
    required: bool,
    cpu: &CpuVirt,
    findings: &mut Vec<Finding>,
) -> Option<std::fs::Metadata> {
    let meta = match std::fs::metadata(device) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let detail = format!("{} does not exist", ticked(device));
            let hint = if cpu.modules.is_empty() {
                cpu.module_hint()
            } else {
                format!(
                    "the module is loaded but the node is missing: `udevadm trigger --name-match=kvm` or `mknod {} c 10 232`; in a container, pass `--device /dev/kvm`",
                    device.display()
                )
            };
            findings.push(if required {
                Finding::fail(F, "kvm.node", detail, hint)
            } else {
                Finding::warn(
                    F,
                    "kvm.node",
                    format!("{detail}; jobs that need KVM will fail"),
                    hint,
                )
            });
            return None;
        }
        Err(err) => {
            findings.push(Finding::fail(
                F,
                "kvm.node",
                format!("cannot stat {}: {err}", ticked(device)),
                "check the permissions of `/dev`",
            ));
            return None;
        }
    };
    let kind = meta.file_type();
    if !kind.is_char_device() {
        let what = if kind.is_file() {
            "a regular file"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_block_device() {
            "a block device"
        } else {
            "not a character device"
        };
        findings.push(Finding::fail(
            F,
            "kvm.node",
            format!("{} is {what}, not the KVM character device", ticked(device)),
            format!(
                "remove it and recreate the node: `rm {0} && mknod -m 0660 {0} c 10 232 && chgrp kvm {0}` (or reboot; udev creates it)",
                device.display()
            ),
        ));
        return None;
    }
    let (major, minor) = dev_numbers(meta.rdev());
    if (major, minor) != (KVM_MAJOR, KVM_MINOR) {
        findings.push(Finding::fail(
            F,
            "kvm.node",
            format!(
                "{} is char device {major}:{minor}, not KVM's 10:232",
                ticked(device)
            ),
            format!(
                "recreate it: `rm {0} && mknod -m 0660 {0} c 10 232 && chgrp kvm {0}`",
                device.display()
            ),
        ));
        return None;
    }
    findings.push(Finding::pass(
        F,
        "kvm.node",
        format!(
            "{} is char device 10:232, {}",
            ticked(device),
            owner_mode(&meta)
        ),
    ));
    Some(meta)
}

/// `major:minor` of a device number (glibc's `gnu_dev_major/minor` encoding).
pub fn dev_numbers(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff);
    (major, minor)
}

/// `user:group 0660` of a file.
pub fn owner_mode(meta: &std::fs::Metadata) -> String {
    format!(
        "{}:{} {:04o}",
        user_name(meta.uid()),
        group_name(meta.gid()),
        meta.mode() & 0o7777
    )
}

pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

pub fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(group)) => group.name,
        _ => gid.to_string(),
    }
}

const UDEV_RULE_HINT: &str = "give it to the `kvm` group with a udev rule, not a chmod (udev re-applies modes): \
    `groupadd -f --system kvm; echo 'KERNEL==\"kvm\", GROUP=\"kvm\", MODE=\"0660\", OPTIONS+=\"static_node=kvm\"' > /etc/udev/rules.d/65-kvm.rules; \
    udevadm control --reload; udevadm trigger --name-match=kvm`";

/// `kvm.mode`: who may open the node at all.
fn mode_finding(device: &Path, meta: &std::fs::Metadata) -> Finding {
    let mode = meta.mode() & 0o777;
    let desc = owner_mode(meta);
    if mode & 0o006 == 0o006 {
        Finding::pass(F, "kvm.mode", format!("{desc}: every user may open it"))
    } else if mode & 0o060 == 0o060 && meta.gid() != 0 {
        Finding::pass(
            F,
            "kvm.mode",
            format!(
                "{desc}: members of `{}` may open it",
                group_name(meta.gid())
            ),
        )
    } else {
        Finding::warn(
            F,
            "kvm.mode",
            format!("{} is {desc}: only root can open it", ticked(device)),
            UDEV_RULE_HINT,
        )
    }
}

fn api_findings(device: &Path, probe: &DeviceProbe) -> Vec<Finding> {
    if let Err(errno) = probe.open {
        let me = user_name(nix::unistd::geteuid().as_raw());
        if !nix::unistd::geteuid().is_root() && matches!(errno, Errno::EACCES | Errno::EPERM) {
            return vec![Finding::skip(
                F,
                "kvm.api",
                format!(
                    "`{me}` (doctor's own user) cannot open {}: the API checks need root (`sudo agentctl doctor`)",
                    ticked(device)
                ),
            )];
        }
        return vec![Finding::fail(
            F,
            "kvm.api",
            format!("cannot open {} as `{me}`: {}", ticked(device), errno.desc()),
            vanished_or_dmesg(errno),
        )];
    }
    let mut findings = Vec::new();
    findings.push(match probe.api_version {
        Ok(KVM_API_VERSION) => Finding::pass(F, "kvm.api", "KVM_GET_API_VERSION returned 12"),
        Ok(other) => Finding::fail(
            F,
            "kvm.api",
            format!("KVM_GET_API_VERSION returned {other}, QEMU needs 12"),
            "this kernel's KVM is unsupported; install a distribution kernel",
        ),
        Err(errno) => Finding::fail(
            F,
            "kvm.api",
            format!("KVM_GET_API_VERSION failed: {}", errno.desc()),
            format!(
                "{} does not answer KVM ioctls; check `dmesg | grep -i kvm`",
                ticked(device)
            ),
        ),
    });
    let missing: Vec<&str> = REQUIRED_CAPS
        .iter()
        .chain(if cfg!(target_arch = "x86_64") {
            REQUIRED_CAPS_X86
        } else {
            &[]
        })
        .filter(|(_, number)| {
            !probe
                .caps
                .iter()
                .any(|(cap, value)| cap == number && *value > 0)
        })
        .map(|(name, _)| *name)
        .collect();
    let value = |number: i64| {
        probe
            .caps
            .iter()
            .find(|(cap, _)| *cap == number)
            .map(|(_, v)| *v)
            .unwrap_or(0)
    };
    let vcpus = format!(
        "recommended vCPUs {}, max {}",
        value(CAP_NR_VCPUS),
        value(CAP_MAX_VCPUS)
    );
    findings.push(if missing.is_empty() {
        Finding::pass(
            F,
            "kvm.caps",
            format!("every capability QEMU requires is there; {vcpus}"),
        )
    } else {
        Finding::fail(
            F,
            "kvm.caps",
            format!("missing KVM_CAP_{}; {vcpus}", missing.join(", KVM_CAP_")),
            "QEMU will refuse `-accel kvm`; use a newer kernel or run without KVM (`-accel tcg`)",
        )
    });
    findings.push(match probe.create_vm {
        Ok(()) => Finding::pass(F, "kvm.vm", "KVM_CREATE_VM succeeded"),
        Err(errno) => Finding::fail(
            F,
            "kvm.vm",
            format!("KVM_CREATE_VM failed: {}", errno.desc()),
            "another hypervisor may own VT-x/AMD-V (VirtualBox, VMware), or memory is short; check `dmesg | grep -i kvm`",
        ),
    });
    findings
}

fn vanished_or_dmesg(errno: Errno) -> &'static str {
    match errno {
        Errno::ENXIO | Errno::ENODEV => {
            "load the KVM module (`modprobe kvm_intel` or `modprobe kvm_amd`); check `dmesg | grep -i kvm`"
        }
        _ => "check `dmesg | grep -i kvm`",
    }
}

/// `kvm.open`: the runner user opens the node read-write and creates a VM.
pub fn open_finding(
    device: &Path,
    meta: &std::fs::Metadata,
    identity: &Identity,
) -> Result<Finding, DoctorError> {
    let user = &identity.name;
    let probe = match probe_device(device, Some(identity))? {
        Ok(probe) => probe,
        Err(failure @ ProbeFailure::CannotBecome { .. }) => {
            return Ok(Finding::skip(
                F,
                "kvm.open",
                format!(
                    "{failure}: run `agentctl doctor` as root (or as `{user}`) to check its access"
                ),
            )
            .subject(user))
        }
        Err(failure) => {
            return Ok(Finding::fail(
                F,
                "kvm.open",
                format!("cannot probe {} as `{user}`: {failure}", ticked(device)),
                "check `dmesg | grep -i kvm`",
            )
            .subject(user))
        }
    };
    let finding = match probe.open {
        Ok(()) => match probe.create_vm {
            Ok(()) => Finding::pass(
                F,
                "kvm.open",
                format!("`{user}` opens {} read-write and creates a VM", ticked(device)),
            ),
            Err(errno) => Finding::fail(
                F,
                "kvm.open",
                format!(
                    "`{user}` opens {} but KVM_CREATE_VM fails: {}",
                    ticked(device),
                    errno.desc()
                ),
                "check `dmesg | grep -i kvm`",
            ),
        },
        Err(Errno::EACCES) | Err(Errno::EPERM) => {
            let group = meta.gid();
            let in_group = identity.groups.iter().any(|g| g.as_raw() == group);
            let group_rw = meta.mode() & 0o060 == 0o060;
            let hint = if group != 0 && group_rw && !in_group {
                format!(
                    "usermod -aG {} {user}, then restart the runner services (a running process keeps its old groups)",
                    group_name(group)
                )
            } else {
                format!("give the node to the `kvm` group first (the kvm.mode hint), then `usermod -aG kvm {user}` and restart the runner services")
            };
            let membership = if group == 0 {
                "only root's group has access".to_owned()
            } else if in_group {
                format!("`{user}` is in `{}`", group_name(group))
            } else {
                format!("`{user}` is not in `{}`", group_name(group))
            };
            Finding::fail(
                F,
                "kvm.open",
                format!(
                    "`{user}` cannot open {} read-write: permission denied ({}; {membership})",
                    ticked(device),
                    owner_mode(meta)
                ),
                hint,
            )
        }
        Err(errno @ (Errno::ENXIO | Errno::ENODEV)) => Finding::fail(
            F,
            "kvm.open",
            format!(
                "`{user}` opens {} but no driver answers: {}",
                ticked(device),
                errno.desc()
            ),
            "load the KVM module (`modprobe kvm_intel` or `modprobe kvm_amd`); check `dmesg | grep -i kvm`",
        ),
        Err(errno) => Finding::fail(
            F,
            "kvm.open",
            format!("`{user}` cannot open {}: {}", ticked(device), errno.desc()),
            "check `dmesg | grep -i kvm`",
        ),
    };
    Ok(finding.subject(user))
}

/// `kvm.nested`: the module's `nested` parameter, when a runner needs a hypervisor in its guest.
pub fn nested_finding(sys_root: &Path, cpu: &CpuVirt) -> Finding {
    for (module, vendor) in [("kvm_intel", "intel"), ("kvm_amd", "amd")] {
        let param = sys_root
            .join("module")
            .join(module)
            .join("parameters/nested");
        let Ok(value) = std::fs::read_to_string(&param) else {
            continue;
        };
        let value = value.trim();
        return if value == "Y" || value == "1" {
            Finding::pass(F, "kvm.nested", format!("`{module}` nested={value}"))
        } else {
            Finding::fail(
                F,
                "kvm.nested",
                format!("`{module}` nested={value}: guests cannot run their own hypervisor"),
                format!(
                    "echo 'options {module} nested=1' > /etc/modprobe.d/kvm-nested.conf, then reload the module (`modprobe -r {module} && modprobe {module}`, with no VM running) or reboot; ({vendor})"
                ),
            )
        };
    }
    Finding::fail(
        F,
        "kvm.nested",
        format!(
            "nested virtualisation was asked for (`[host] nested_virt`) but neither `kvm_intel` nor `kvm_amd` is loaded ({})",
            if cpu.modules.is_empty() { "no kvm module".to_owned() } else { cpu.modules.join(", ") }
        ),
        cpu.module_hint(),
    )
}

fn deep_finding(device: &Path, identity: Option<&Identity>) -> Result<Finding, DoctorError> {
    if !cfg!(target_arch = "x86_64") {
        return Ok(Finding::skip(
            F,
            "kvm.run",
            "the guest-to-HLT probe is written for x86_64 only",
        ));
    }
    let who = identity
        .map(|i| format!("as `{}`", i.name))
        .unwrap_or_else(|| format!("as `{}`", user_name(nix::unistd::geteuid().as_raw())));
    let result = deep_probe(device, identity, Duration::from_secs(2))?;
    let finding = match result {
        DeepResult::Halted => Finding::pass(
            F,
            "kvm.run",
            format!("a guest ran to `hlt` through KVM_RUN ({who})"),
        ),
        DeepResult::Setup { step, errno } => Finding::fail(
            F,
            "kvm.run",
            format!("{step} failed {who}: {}", errno.desc()),
            "fix the kvm.open / kvm.vm findings first; check `dmesg | grep -i kvm`",
        ),
        DeepResult::RunFailed(errno) => Finding::fail(
            F,
            "kvm.run",
            format!("KVM_RUN failed {who}: {}", errno.desc()),
            "the device answers ioctls but cannot run a guest (a paravirtual or broken KVM); use `-accel tcg` or a host with VT-x/AMD-V",
        ),
        DeepResult::Exit { reason, detail } => {
            let what = match reason {
                KVM_EXIT_SHUTDOWN => "KVM_EXIT_SHUTDOWN (triple fault)".to_owned(),
                KVM_EXIT_FAIL_ENTRY => format!("KVM_EXIT_FAIL_ENTRY (hardware entry failure reason {detail:#x})"),
                KVM_EXIT_INTERNAL_ERROR => format!("KVM_EXIT_INTERNAL_ERROR (suberror {detail})"),
                other => format!("exit reason {other}"),
            };
            Finding::fail(
                F,
                "kvm.run",
                format!("a real-mode guest did not reach `hlt` {who}: {what}"),
                "the device answers ioctls but cannot run a stock guest (paravirtual KVM?); use `-accel tcg` or a host with VT-x/AMD-V",
            )
        }
        DeepResult::Probe(failure) => Finding::fail(
            F,
            "kvm.run",
            format!("KVM_RUN {who}: {failure}"),
            "the guest never reached `hlt`: the device answers ioctls but cannot run a guest; use `-accel tcg` or a host with VT-x/AMD-V",
        ),
    };
    Ok(finding)
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::*;
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn ra_runner() -> Identity {
        Identity::lookup("ra-runner")
            .unwrap()
            .expect("user `ra-runner` exists (scripts/setup)")
    }

    /// A temp dir every user can traverse (tempfile makes 0700 ones).
    fn open_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn node(
        dir: &Path,
        name: &str,
        major: u64,
        minor: u64,
        mode: u32,
        gid: u32,
    ) -> std::path::PathBuf {
        let path = dir.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        nix::unistd::chown(&path, None, Some(nix::unistd::Gid::from_raw(gid))).unwrap();
        path
    }

    /// A system group (and optionally a user in it) that exist only for one test.
    struct Scratch {
        group: String,
        user: Option<String>,
    }

    impl Scratch {
        fn new(tag: &str, with_user: bool) -> Scratch {
            let group = format!("radoc{tag}{}", std::process::id());
            let ok = Command::new("groupadd")
                .args(["--system", &group])
                .status()
                .unwrap();
            assert!(ok.success(), "groupadd {group}");
            let user = with_user.then(|| {
                let user = format!("{group}u");
                let ok = Command::new("useradd")
                    .args(["--system", "--no-create-home", "-G", &group, &user])
                    .status()
                    .unwrap();
                assert!(ok.success(), "useradd {user}");
                user
            });
            Scratch { group, user }
        }

        fn gid(&self) -> u32 {
            nix::unistd::Group::from_name(&self.group)
                .unwrap()
                .unwrap()
                .gid
                .as_raw()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if let Some(user) = &self.user {
                let _ = Command::new("userdel").arg(user).status();
            }
            let _ = Command::new("groupdel").arg(&self.group).status();
        }
    }

    fn node_of(path: &Path, required: bool) -> (Option<std::fs::Metadata>, Vec<Finding>) {
        let mut findings = Vec::new();
        let meta = node_finding(path, required, &CpuVirt::default(), &mut findings);
        (meta, findings)
    }

    #[test]
    fn the_real_dev_kvm_answers_as_root() {
        let (meta, findings) = node_of(Path::new("/dev/kvm"), true);
        assert_eq!(findings[0].outcome, Outcome::Pass, "{findings:?}");
        assert!(meta.is_some());
        let probe = probe_device(Path::new("/dev/kvm"), None).unwrap().unwrap();
        assert_eq!(probe.open, Ok(()));
        assert_eq!(probe.api_version, Ok(KVM_API_VERSION));
        assert_eq!(probe.create_vm, Ok(()));
        let api = api_findings(Path::new("/dev/kvm"), &probe);
        assert_eq!(api[0].outcome, Outcome::Pass, "{api:?}");
        assert_eq!(api[2].outcome, Outcome::Pass, "{api:?}");
    }

    #[test]
    fn the_real_dev_kvm_refuses_a_user_outside_its_group() {
        let meta = std::fs::metadata("/dev/kvm").unwrap();
        let finding = open_finding(Path::new("/dev/kvm"), &meta, &ra_runner()).unwrap();
        assert_eq!(finding.outcome, Outcome::Fail, "{finding:?}");
        assert!(
            finding.detail.contains("permission denied"),
            "{}",
            finding.detail
        );
        let hint = finding.hint.unwrap();
        // This host's node is root:root 0600, so only a udev rule plus the group can help.
        if meta.gid() == 0 {
            assert!(hint.contains("kvm.mode hint"), "{hint}");
            assert!(hint.contains("usermod -aG kvm ra-runner"), "{hint}");
        } else {
            assert!(hint.contains("usermod -aG"), "{hint}");
        }
    }

    #[test]
    fn a_group_node_opens_for_a_member_only() {
        let scratch = Scratch::new("k", true);
        let dir = open_dir();
        let kvm = node(dir.path(), "kvm", 10, 232, 0o660, scratch.gid());
        let meta = std::fs::metadata(&kvm).unwrap();
        assert_eq!(mode_finding(&kvm, &meta).outcome, Outcome::Pass);

        // A member, with the group from the user database (getgrouplist), opens it for real.
        let member = Identity::lookup(scratch.user.as_deref().unwrap())
            .unwrap()
            .unwrap();
        assert!(member.groups.iter().any(|g| g.as_raw() == scratch.gid()));
        let ok = open_finding(&kvm, &meta, &member).unwrap();
        assert_eq!(ok.outcome, Outcome::Pass, "{ok:?}");
        assert!(ok.detail.contains("creates a VM"), "{}", ok.detail);

        // Not a member: denied, and told which group to join.
        let outsider = open_finding(&kvm, &meta, &ra_runner()).unwrap();
        assert_eq!(outsider.outcome, Outcome::Fail, "{outsider:?}");
        assert_eq!(
            outsider.hint.as_deref(),
            Some(
                format!(
                    "usermod -aG {} ra-runner, then restart the runner services (a running process keeps its old groups)",
                    scratch.group
                )
                .as_str()
            )
        );
        assert!(outsider
            .detail
            .contains(&format!("`ra-runner` is not in `{}`", scratch.group)));
    }

    #[test]
    fn a_root_only_node_warns_and_needs_a_udev_rule() {
        let dir = open_dir();
        let kvm = node(dir.path(), "kvm", 10, 232, 0o600, 0);
        let meta = std::fs::metadata(&kvm).unwrap();
        let mode = mode_finding(&kvm, &meta);
        assert_eq!(mode.outcome, Outcome::Warn);
        assert!(
            mode.detail
                .ends_with("root:root 0600: only root can open it"),
            "{}",
            mode.detail
        );
        assert!(mode
            .hint
            .unwrap()
            .contains("/etc/udev/rules.d/65-kvm.rules"));
    }

    #[test]
    fn wrong_numbers_regular_file_and_missing_node_fail() {
        let dir = open_dir();
        let wrong = node(dir.path(), "kvm-wrong", 10, 200, 0o666, 0);
        let (meta, findings) = node_of(&wrong, true);
        assert!(meta.is_none());
        assert_eq!(findings[0].outcome, Outcome::Fail);
        assert!(findings[0]
            .detail
            .contains("char device 10:200, not KVM's 10:232"));

        let file = dir.path().join("kvm-file");
        std::fs::write(&file, b"").unwrap();
        let (meta, findings) = node_of(&file, true);
        assert!(meta.is_none());
        assert_eq!(findings[0].outcome, Outcome::Fail);
        assert!(
            findings[0].detail.contains("is a regular file"),
            "{}",
            findings[0].detail
        );

        let missing = dir.path().join("kvm-missing");
        let (_, required) = node_of(&missing, true);
        assert_eq!(required[0].outcome, Outcome::Fail);
        assert!(required[0].hint.as_deref().unwrap().contains("VT-x"));
        let (_, optional) = node_of(&missing, false);
        assert_eq!(optional[0].outcome, Outcome::Warn);
    }

    #[test]
    fn a_node_without_a_driver_is_named_as_such() {
        // A misc minor no driver registered on this host (from /proc/misc): open gives ENODEV, as
        // /dev/kvm does when its module is not loaded.
        let used: Vec<u64> = std::fs::read_to_string("/proc/misc")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        let free = (100..200).find(|m| !used.contains(m)).unwrap();
        let dir = open_dir();
        let ghost = node(dir.path(), "kvm", 10, free, 0o666, 0);
        let meta = std::fs::metadata(&ghost).unwrap();
        let finding = open_finding(&ghost, &meta, &ra_runner()).unwrap();
        assert_eq!(finding.outcome, Outcome::Fail, "{finding:?}");
        assert!(
            finding.detail.contains("no driver answers"),
            "{}",
            finding.detail
        );
    }

    #[test]
    fn nested_parameter_is_read_from_the_module() {
        let sys = tempfile::tempdir().unwrap();
        let params = sys.path().join("module/kvm_intel/parameters");
        std::fs::create_dir_all(&params).unwrap();
        std::fs::write(params.join("nested"), "N\n").unwrap();
        let off = nested_finding(sys.path(), &CpuVirt::default());
        assert_eq!(off.outcome, Outcome::Fail);
        assert!(off.hint.unwrap().contains("options kvm_intel nested=1"));
        std::fs::write(params.join("nested"), "Y\n").unwrap();
        assert_eq!(
            nested_finding(sys.path(), &CpuVirt::default()).outcome,
            Outcome::Pass
        );
        let none = nested_finding(Path::new("/nonexistent"), &CpuVirt::default());
        assert_eq!(none.outcome, Outcome::Fail);
    }

    #[test]
    fn deep_probe_reports_what_this_host_really_does() {
        // This host's paravirtual KVM (kvm_pvm) does run a real-mode guest to `hlt` (measured);
        // it is QEMU's `-cpu host` that aborts on it (see the qemu family's deep check).
        let started = std::time::Instant::now();
        let result = deep_probe(Path::new("/dev/kvm"), None, Duration::from_secs(2)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(4));
        let finding = deep_finding(Path::new("/dev/kvm"), None).unwrap();
        eprintln!("deep probe: {result:?} -> {finding:?}");
        assert_eq!(result, DeepResult::Halted);
        assert_eq!(finding.outcome, Outcome::Pass);
        assert_eq!(
            finding.detail,
            "a guest ran to `hlt` through KVM_RUN (as `root`)"
        );
    }
}

//! Which runner package fits this host: `uname -m` → the asset's arch.

use std::fmt;
use std::str::FromStr;

use super::ReleaseError;
use crate::config::Version;

/// The Linux architectures `actions/runner` ships packages for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X64,
    Arm64,
    Arm,
}

/// What an unsupported-arch message lists.
pub const SHIPPED: &str = "x64 (x86_64), arm64 (aarch64), arm (armv7l)";

impl Arch {
    /// The arch of this host, from `uname -m`.
    pub fn host() -> Result<Arch, ReleaseError> {
        let uts = nix::sys::utsname::uname().map_err(|errno| ReleaseError::Uname {
            source: std::io::Error::from(errno),
        })?;
        Arch::from_machine(&uts.machine().to_string_lossy())
    }

    /// Map a kernel machine name (`uname -m`) to the runner's arch.
    pub fn from_machine(machine: &str) -> Result<Arch, ReleaseError> {
        match machine {
            "x86_64" | "amd64" => Ok(Arch::X64),
            "aarch64" | "arm64" => Ok(Arch::Arm64),
            // A 32-bit ARMv7 user space, also on an ARMv8 CPU running in 32-bit mode.
            "armv7l" | "armv8l" => Ok(Arch::Arm),
            other => Err(ReleaseError::UnsupportedArch {
                machine: other.to_owned(),
            }),
        }
    }

    /// The name GitHub uses: `x64`, `arm64`, `arm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X64 => "x64",
            Arch::Arm64 => "arm64",
            Arch::Arm => "arm",
        }
    }

    /// The platform key of the release-body markers: `linux-x64`.
    pub fn platform(self) -> String {
        format!("linux-{}", self.as_str())
    }

    /// `actions-runner-linux-x64-2.336.0.tar.gz`.
    pub fn asset_name(self, version: Version) -> String {
        format!("actions-runner-linux-{}-{version}.tar.gz", self.as_str())
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = ReleaseError;

    /// Accepts GitHub's names (`x64`, `arm64`, `arm`) and kernel machine names.
    fn from_str(text: &str) -> Result<Arch, ReleaseError> {
        match text {
            "x64" => Ok(Arch::X64),
            "arm" => Ok(Arch::Arm),
            other => Arch::from_machine(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_map_to_runner_arches() {
        assert_eq!(Arch::from_machine("x86_64").unwrap(), Arch::X64);
        assert_eq!(Arch::from_machine("aarch64").unwrap(), Arch::Arm64);
        assert_eq!(Arch::from_machine("armv7l").unwrap(), Arch::Arm);
        assert_eq!("arm64".parse::<Arch>().unwrap(), Arch::Arm64);
        assert_eq!("x64".parse::<Arch>().unwrap(), Arch::X64);
    }

    #[test]
    fn unsupported_machines_name_the_shipped_arches() {
        for machine in ["riscv64", "loongarch64", "s390x", "armv6l"] {
            let err = Arch::from_machine(machine).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&format!("`{machine}`")), "{text}");
            assert!(
                text.contains("x64 (x86_64), arm64 (aarch64), arm (armv7l)"),
                "{text}"
            );
        }
    }

    #[test]
    fn asset_names_follow_the_release_workflow() {
        let version = "2.336.0".parse().unwrap();
        assert_eq!(
            Arch::Arm64.asset_name(version),
            "actions-runner-linux-arm64-2.336.0.tar.gz"
        );
        assert_eq!(Arch::Arm.platform(), "linux-arm");
    }
}

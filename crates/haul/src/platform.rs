//! Platforms such as `linux/amd64` or `linux/arm/v7`: parsing, normalisation, the host's platform,
//! and choosing an image index entry for a requested platform.
//!
//! Names are normalised as containerd does it, so `aarch64`, `arm64` and `arm64/v8` are one
//! platform, `x86_64` is `amd64` and `armhf` is `arm/v7`; only the normalised form is ever
//! compared or displayed. Matching follows containerd's `platforms.Only`, which `docker pull`
//! uses: a request accepts its own platform first, then older variants the same CPU runs
//! (`arm/v7` then `v6` then `v5`; `amd64/v3` then `v2` then plain `amd64`), then the 32-bit
//! sibling (`amd64` takes `386`, `arm64` takes `arm/v8` down to `arm/v5`). [`best_match`] returns
//! the best-ranked entry and, among equally ranked ones, the first. Another operating system never
//! matches, and neither do attestation entries (`unknown/unknown`). `os.version` is compared only
//! for Windows, and `os.features` never.
//!
//! ```
//! use haul::platform::{self, Platform};
//!
//! let pi: Platform = "linux/armhf".parse()?;
//! assert_eq!(pi.to_string(), "linux/arm/v7");
//!
//! // An index offering arm/v6 and arm64: a v7 CPU runs v6 images.
//! let offered: Vec<Platform> = vec!["linux/arm64".parse()?, "linux/arm/v6".parse()?];
//! assert_eq!(platform::best_match(&pi, &offered), Some(1));
//! # Ok::<(), haul::platform::PlatformError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An OCI platform as it appears in an image index entry or an image config.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// The CPU architecture (`amd64`, `arm64`, `arm`…).
    pub architecture: String,
    /// The operating system (`linux`, `windows`…).
    pub os: String,
    /// The CPU variant (`v7` for `arm`, `v8` for `arm64`, `v2`… for `amd64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The OS version (`os.version`): compared only for Windows.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features (`os.features`): never compared.
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
}

/// Why a string is not a platform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// Not two or three non-empty parts separated by `/`.
    #[error(
        "invalid platform {input:?}: expected OS/ARCH or OS/ARCH/VARIANT, such as linux/amd64 or linux/arm/v7"
    )]
    Shape {
        /// The text given.
        input: String,
    },
    /// A part with characters a platform name does not have.
    #[error(
        "invalid platform {input:?}: {part:?} may contain only letters, digits, '_', '.' and '-'"
    )]
    Part {
        /// The text given.
        input: String,
        /// The offending part.
        part: String,
    },
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// Parses `os/arch[/variant]` into its normalised form. Unlike containerd, a lone `arm64` or
    /// `linux` is refused: guessing the missing half from the host is how the wrong image gets
    /// pulled silently.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(PlatformError::Shape {
                input: s.to_owned(),
            });
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
        if let Some(part) = parts.iter().find(|p| !p.bytes().all(allowed)) {
            return Err(PlatformError::Part {
                input: s.to_owned(),
                part: (*part).to_owned(),
            });
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()).normalized())
    }
}

/// `os/arch[/variant]` of the normalised form, e.g. `linux/arm64/v8` for `linux/aarch64`.
impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let normalized = self.normalized();
        write!(f, "{}/{}", normalized.os, normalized.architecture)?;
        if let Some(variant) = &normalized.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// A platform with the given parts as written (not normalised) and no OS version or features.
    #[must_use]
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: architecture.to_owned(),
            os: os.to_owned(),
            variant: variant.map(str::to_owned),
            os_version: None,
            os_features: Vec::new(),
        }
    }

    /// The platform whose images run here, normalised.
    ///
    /// The OS is `linux` on macOS and Windows too: there are no macOS images, and Docker Desktop
    /// runs Linux containers on both by default. Ask for `windows/amd64` explicitly to get
    /// Windows images.
    #[must_use]
    pub fn host() -> Platform {
        let little_endian = cfg!(target_endian = "little");
        let os = match std::env::consts::OS {
            "linux" | "macos" | "windows" => "linux",
            other => other,
        };
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some(host_arm_variant())),
            "powerpc64" if little_endian => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "powerpc" => ("ppc", None),
            "mips" if little_endian => ("mipsle", None),
            "mips64" if little_endian => ("mips64le", None),
            "loongarch64" => ("loong64", None),
            "wasm32" => ("wasm", None),
            // riscv64, s390x, sparc64, mips and mips64 are spelled the same by Rust and OCI.
            other => (other, None),
        };
        Platform::new(os, architecture, variant).normalized()
    }

    /// containerd's normalisation: lower case, architecture aliases folded, ARM variants spelled
    /// `vN`, `arm64` without a variant made `v8`, `amd64/v1` made plain `amd64`, `arm` without a
    /// variant made `v7`, OS features sorted and deduplicated.
    #[must_use]
    pub fn normalized(&self) -> Platform {
        let os = match self.os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_owned(),
            other => other.to_owned(),
        };
        let variant = self
            .variant
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(str::to_ascii_lowercase);
        let architecture = self.architecture.to_ascii_lowercase();
        let (architecture, variant) = normalize_arch(&architecture, variant);
        let mut os_features = self.os_features.clone();
        os_features.sort();
        os_features.dedup();
        Platform {
            architecture: architecture.to_owned(),
            os,
            variant,
            os_version: self.os_version.clone(),
            os_features,
        }
    }

    /// The normalised platforms this one accepts, most preferred first (containerd's
    /// `platforms.Only` vector).
    #[must_use]
    pub fn compatible(&self) -> Vec<Platform> {
        let want = self.normalized();
        let sibling = |architecture: &str, variant: Option<String>| Platform {
            architecture: architecture.to_owned(),
            variant,
            ..want.clone()
        };
        let mut out = vec![want.clone()];
        match want.architecture.as_str() {
            "amd64" => {
                if let Some(level) = want.variant.as_deref().and_then(version_number) {
                    for older in (2..level).rev() {
                        out.push(sibling("amd64", Some(format!("v{older}"))));
                    }
                    // v1 is the baseline, which normalises to no variant.
                    out.push(sibling("amd64", None));
                }
                out.push(sibling("386", None));
            }
            "arm" => {
                if let Some(version) = want.variant.as_deref().and_then(version_number) {
                    for older in (5..version).rev() {
                        out.push(sibling("arm", Some(format!("v{older}"))));
                    }
                }
            }
            "arm64" => {
                if let Some((major, minor)) = want.variant.as_deref().and_then(arm64_version) {
                    let mut v8_minor = minor;
                    if major == 9 {
                        for older in (0..minor).rev() {
                            out.push(sibling("arm64", Some(arm64_variant(9, older))));
                        }
                        // Armv9.0 was cut from Armv8.5, so v9.x runs what v8.(x+5) runs.
                        v8_minor = minor + 5;
                        out.push(sibling("arm64", Some(arm64_variant(8, v8_minor))));
                    }
                    if major == 8 || major == 9 {
                        for older in (0..v8_minor).rev() {
                            out.push(sibling("arm64", Some(arm64_variant(8, older))));
                        }
                    }
                }
                for version in (5..=8).rev() {
                    out.push(sibling("arm", Some(format!("v{version}"))));
                }
            }
            _ => {}
        }
        out
    }
}

/// The index into `candidates` of the entry that best fits `want`, ranked by
/// [`Platform::compatible`]; the first of equally ranked entries wins. `None` when nothing fits.
pub fn best_match<'a>(
    want: &Platform,
    candidates: impl IntoIterator<Item = &'a Platform>,
) -> Option<usize> {
    let order = want.compatible();
    let mut best: Option<(usize, usize)> = None;
    for (index, candidate) in candidates.into_iter().enumerate() {
        if let Some(rank) = rank(&order, candidate)
            && best.is_none_or(|(best_rank, _)| rank < best_rank)
        {
            best = Some((rank, index));
        }
    }
    best.map(|(_, index)| index)
}

/// Whether an index entry for `candidate` may be pulled when `want` is requested.
#[must_use]
pub fn matches(want: &Platform, candidate: &Platform) -> bool {
    rank(&want.compatible(), candidate).is_some()
}

fn rank(order: &[Platform], candidate: &Platform) -> Option<usize> {
    let candidate = candidate.normalized();
    // Attestation manifests carry this platform so that old clients skip them; so do we, even
    // if someone asks for it.
    if candidate.os == "unknown" || candidate.architecture == "unknown" {
        return None;
    }
    order.iter().position(|want| {
        want.os == candidate.os
            && want.architecture == candidate.architecture
            && want.variant == candidate.variant
            && windows_version_fits(want, &candidate)
    })
}

/// Windows containers need the host's build; Linux ignores `os.version`. An entry or request
/// without a version is not held against the other.
fn windows_version_fits(want: &Platform, candidate: &Platform) -> bool {
    if want.os != "windows" {
        return true;
    }
    match (&want.os_version, &candidate.os_version) {
        // major.minor.build; the fourth part is a patch level that does not affect compatibility.
        (Some(w), Some(c)) => w.split('.').take(3).eq(c.split('.').take(3)),
        _ => true,
    }
}

fn normalize_arch(arch: &str, variant: Option<String>) -> (&str, Option<String>) {
    match arch {
        "i386" | "i686" | "x86" => ("386", None),
        "x86_64" | "x86-64" | "amd64" => {
            let variant = variant.map(with_v).filter(|v| v != "v1");
            ("amd64", variant)
        }
        "aarch64" | "arm64" => {
            let variant = match variant.map(with_v).as_deref() {
                None | Some("v8.0") => "v8".to_owned(),
                Some("v9.0") => "v9".to_owned(),
                Some(other) => other.to_owned(),
            };
            ("arm64", Some(variant))
        }
        "armhf" => ("arm", Some("v7".to_owned())),
        "armel" => ("arm", Some("v6".to_owned())),
        "arm" => ("arm", Some(variant.map_or_else(|| "v7".to_owned(), with_v))),
        other => (other, variant),
    }
}

/// `7` → `v7`, `8.2` → `v8.2`; anything else unchanged.
fn with_v(variant: String) -> String {
    if variant.starts_with(|c: char| c.is_ascii_digit()) {
        format!("v{variant}")
    } else {
        variant
    }
}

/// `v7` → 7.
fn version_number(variant: &str) -> Option<u32> {
    variant.strip_prefix('v')?.parse().ok()
}

/// `v8` → (8, 0), `v8.2` → (8, 2), `v9.1` → (9, 1).
fn arm64_version(variant: &str) -> Option<(u32, u32)> {
    let version = variant.strip_prefix('v')?;
    match version.split_once('.') {
        Some((major, minor)) => Some((major.parse().ok()?, minor.parse().ok()?)),
        None => Some((version.parse().ok()?, 0)),
    }
}

fn arm64_variant(major: u32, minor: u32) -> String {
    if minor == 0 {
        format!("v{major}")
    } else {
        format!("v{major}.{minor}")
    }
}

/// 32-bit ARM builds run on v5 to v8 CPUs, so the variant comes from the running CPU, not from
/// how haul was compiled. v7 is the common case and the fallback.
fn host_arm_variant() -> &'static str {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| arm_variant_from_cpuinfo(&text))
        .unwrap_or("v7")
}

fn arm_variant_from_cpuinfo(text: &str) -> Option<&'static str> {
    let architecture = cpuinfo_field(text, "CPU architecture")?.to_ascii_lowercase();
    let variant = match architecture.as_str() {
        a if a.starts_with('8') || a == "aarch64" => "v8",
        // Some kernels print "?(12)" and similar for v7 cores they have no name for.
        a if a.starts_with('7') || a.starts_with("?(") => "v7",
        a if a.starts_with('6') => "v6",
        a if a.starts_with('5') => "v5",
        _ => return None,
    };
    // The Raspberry Pi 1 and Zero kernels report "7" for their ARMv6 core.
    let armv6_core = cpuinfo_field(text, "model name")
        .is_some_and(|m| m.to_ascii_lowercase().starts_with("armv6-compatible"));
    if variant == "v7" && armv6_core {
        return Some("v6");
    }
    Some(variant)
}

fn cpuinfo_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Platform {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} was refused: {e}"))
    }

    /// An index entry as a registry would send it: not normalised.
    fn entry(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform::new(os, architecture, variant)
    }

    #[test]
    fn parses_and_normalises() {
        let cases = [
            ("linux/amd64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/x86_64", "linux/amd64"),
            ("Linux/X86-64", "linux/amd64"),
            ("linux/arm64", "linux/arm64/v8"),
            ("linux/arm64/v8", "linux/arm64/v8"),
            ("linux/arm64/8", "linux/arm64/v8"),
            ("linux/arm64/v8.0", "linux/arm64/v8"),
            ("linux/arm64/v8.2", "linux/arm64/v8.2"),
            ("linux/arm64/9", "linux/arm64/v9"),
            ("linux/aarch64", "linux/arm64/v8"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("linux/arm/V5", "linux/arm/v5"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/i386", "linux/386"),
            ("linux/i686", "linux/386"),
            ("linux/386", "linux/386"),
            ("linux/ppc64le", "linux/ppc64le"),
            ("linux/s390x", "linux/s390x"),
            ("linux/riscv64", "linux/riscv64"),
            ("windows/amd64", "windows/amd64"),
            ("macos/arm64", "darwin/arm64/v8"),
            ("unknown/unknown", "unknown/unknown"),
        ];
        for (input, display) in cases {
            let platform = parse(input);
            assert_eq!(platform.to_string(), display, "{input}");
            assert_eq!(platform, platform.normalized(), "{input} is normalised");
            assert_eq!(parse(display), platform, "{display} parses back");
        }
        let raw = entry("linux", "aarch64", None);
        assert_eq!(raw.to_string(), "linux/arm64/v8");
        assert_eq!(raw.variant, None, "Display does not change the value");
    }

    #[test]
    fn refuses_malformed_platforms() {
        let cases = [
            ("", "expected OS/ARCH"),
            ("arm64", "expected OS/ARCH"),
            ("linux", "expected OS/ARCH"),
            ("linux/", "expected OS/ARCH"),
            ("/amd64", "expected OS/ARCH"),
            ("linux//v7", "expected OS/ARCH"),
            ("linux/arm/v7/", "expected OS/ARCH"),
            ("linux/amd64/v3/x", "expected OS/ARCH"),
            ("linux/amd 64", "\"amd 64\" may contain only"),
            ("linux/amd64*", "\"amd64*\" may contain only"),
            (" linux/amd64", "\" linux\" may contain only"),
            ("windows(10.0)/amd64", "may contain only"),
        ];
        for (input, fragment) in cases {
            let err = match input.parse::<Platform>() {
                Ok(p) => panic!("{input:?} was accepted as {p}"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.starts_with(&format!("invalid platform {input:?}: ")),
                "{err}"
            );
            assert!(
                err.contains(fragment),
                "{input:?}: {err:?} lacks {fragment:?}"
            );
        }
    }

    /// The platforms of a typical official image on Docker Hub, attestations included.
    fn docker_hub_index() -> Vec<Platform> {
        vec![
            entry("linux", "amd64", None),
            entry("linux", "arm", Some("v5")),
            entry("linux", "arm", Some("v6")),
            entry("linux", "arm", Some("v7")),
            entry("linux", "arm64", Some("v8")),
            entry("linux", "386", None),
            entry("linux", "ppc64le", None),
            entry("linux", "s390x", None),
            entry("unknown", "unknown", None),
            entry("unknown", "unknown", None),
        ]
    }

    #[test]
    fn picks_from_a_docker_hub_index() {
        let index = docker_hub_index();
        let cases = [
            ("linux/amd64", Some(0)),
            ("linux/x86_64", Some(0)),
            ("linux/amd64/v2", Some(0)),
            ("linux/amd64/v3", Some(0)),
            ("linux/arm/v5", Some(1)),
            ("linux/arm/v6", Some(2)),
            ("linux/armel", Some(2)),
            ("linux/arm/v7", Some(3)),
            ("linux/arm", Some(3)),
            ("linux/arm/v8", Some(3)),
            ("linux/arm64", Some(4)),
            ("linux/arm64/v8", Some(4)),
            ("linux/aarch64", Some(4)),
            ("linux/arm64/v8.2", Some(4)),
            ("linux/arm64/v9", Some(4)),
            ("linux/386", Some(5)),
            ("linux/ppc64le", Some(6)),
            ("linux/s390x", Some(7)),
            ("linux/riscv64", None),
            ("windows/amd64", None),
            ("darwin/arm64", None),
            ("unknown/unknown", None),
        ];
        for (want, expected) in cases {
            assert_eq!(best_match(&parse(want), &index), expected, "{want}");
        }
    }

    #[test]
    fn older_variants_rank_below_exact_ones_whatever_the_order() {
        let v5 = entry("linux", "arm", Some("v5"));
        let v6 = entry("linux", "arm", Some("v6"));
        let v7 = entry("linux", "arm", Some("v7"));
        let arm_v7 = parse("linux/arm/v7");
        for order in [
            [&v5, &v6, &v7],
            [&v7, &v6, &v5],
            [&v6, &v5, &v7],
            [&v5, &v7, &v6],
        ] {
            let got = best_match(&arm_v7, order).map(|i| order[i]);
            assert_eq!(got, Some(&v7), "{order:?}");
        }
        assert_eq!(best_match(&arm_v7, [&v5, &v6]), Some(1));
        assert_eq!(best_match(&arm_v7, [&v6, &v5]), Some(0));
        assert_eq!(best_match(&arm_v7, [&v5]), Some(0));
        // Only arm/v6 published: an arm/v7 request takes it; an arm/v5 request cannot.
        assert_eq!(best_match(&arm_v7, [&v6]), Some(0));
        assert_eq!(best_match(&parse("linux/arm/v5"), [&v6]), None);
        // An entry without a variant is v7.
        assert_eq!(
            best_match(&parse("linux/arm/v6"), [&entry("linux", "arm", None)]),
            None
        );
        assert!(matches(&arm_v7, &entry("linux", "arm", None)));
    }

    #[test]
    fn arm64_without_variant_is_v8() {
        let bare = entry("linux", "arm64", None);
        let v8 = entry("linux", "arm64", Some("v8"));
        let aarch64 = entry("Linux", "AArch64", Some("8"));
        for want in ["linux/arm64", "linux/arm64/v8", "linux/aarch64"] {
            let want = parse(want);
            assert!(matches(&want, &bare));
            assert!(matches(&want, &v8));
            assert!(matches(&want, &aarch64));
        }
        assert_eq!(best_match(&parse("linux/arm64/v8"), [&bare]), Some(0));
        // A newer-feature build is not offered to a plain v8 request.
        assert!(!matches(
            &parse("linux/arm64"),
            &entry("linux", "arm64", Some("v8.2"))
        ));
        // v9.0 was cut from v8.5.
        let want = parse("linux/arm64/v9");
        assert!(matches(&want, &entry("linux", "arm64", Some("v8.5"))));
        assert!(!matches(&want, &entry("linux", "arm64", Some("v8.6"))));
        assert_eq!(
            best_match(
                &want,
                [
                    &bare,
                    &entry("linux", "arm64", Some("v8.5")),
                    &entry("linux", "arm64", Some("v9"))
                ]
            ),
            Some(2)
        );
    }

    #[test]
    fn amd64_levels_fall_back_in_order() {
        let plain = entry("linux", "amd64", None);
        let v1 = entry("linux", "amd64", Some("v1"));
        let v2 = entry("linux", "amd64", Some("v2"));
        let v3 = entry("linux", "amd64", Some("v3"));
        let v4 = entry("linux", "amd64", Some("v4"));
        let want = parse("linux/amd64/v3");
        assert_eq!(best_match(&want, [&plain, &v2, &v3]), Some(2));
        assert_eq!(best_match(&want, [&plain, &v2]), Some(1));
        assert_eq!(best_match(&want, [&v2, &plain]), Some(0));
        assert_eq!(best_match(&want, [&v4, &plain]), Some(1));
        assert_eq!(best_match(&want, [&v4, &v1]), Some(1));
        assert_eq!(best_match(&want, [&v4]), None);
        // A plain amd64 (or v1) entry serves every amd64 request; a v2 entry does not serve plain.
        for request in ["linux/amd64", "linux/amd64/v2", "linux/amd64/v4"] {
            assert!(matches(&parse(request), &plain), "{request}");
            assert!(matches(&parse(request), &v1), "{request}");
        }
        assert!(!matches(&parse("linux/amd64"), &v2));
        // Equal ranks: the first entry wins.
        assert_eq!(best_match(&parse("linux/amd64"), [&v1, &plain]), Some(0));
        assert_eq!(best_match(&parse("linux/amd64"), [&plain, &v1]), Some(0));
    }

    #[test]
    fn falls_back_to_the_32_bit_sibling_last() {
        let i386 = entry("linux", "386", None);
        let amd64 = entry("linux", "x86_64", None);
        assert_eq!(best_match(&parse("linux/amd64"), [&i386]), Some(0));
        assert_eq!(best_match(&parse("linux/amd64"), [&i386, &amd64]), Some(1));
        assert!(!matches(&parse("linux/386"), &amd64));

        let arm_v6 = entry("linux", "arm", Some("v6"));
        let arm_v7 = entry("linux", "arm", Some("v7"));
        let arm64 = entry("linux", "arm64", None);
        let want = parse("linux/arm64");
        assert_eq!(best_match(&want, [&arm_v6, &arm_v7]), Some(1));
        assert_eq!(best_match(&want, [&arm_v7, &arm64]), Some(1));
        assert!(!matches(&parse("linux/arm/v7"), &arm64));
    }

    #[test]
    fn other_operating_systems_and_attestations_never_match() {
        let windows = Platform {
            os_version: Some("10.0.17763.5329".to_owned()),
            ..entry("windows", "amd64", None)
        };
        let linux = entry("linux", "amd64", None);
        let attestation = entry("unknown", "unknown", None);
        assert_eq!(
            best_match(&parse("linux/amd64"), [&windows, &linux]),
            Some(1)
        );
        assert_eq!(best_match(&parse("linux/amd64"), [&windows]), None);
        assert_eq!(
            best_match(&parse("windows/amd64"), [&linux, &windows]),
            Some(1)
        );
        assert!(!matches(&parse("unknown/unknown"), &attestation));
        assert!(!matches(&parse("linux/amd64"), &attestation));
        assert_eq!(best_match(&parse("linux/amd64"), []), None);
    }

    #[test]
    fn os_version_counts_only_for_windows() {
        let ltsc2019 = Platform {
            os_version: Some("10.0.17763.5329".to_owned()),
            ..entry("windows", "amd64", None)
        };
        let ltsc2022 = Platform {
            os_version: Some("10.0.20348.2227".to_owned()),
            ..entry("windows", "amd64", None)
        };
        let want = Platform {
            os_version: Some("10.0.20348".to_owned()),
            ..parse("windows/amd64")
        };
        assert_eq!(best_match(&want, [&ltsc2019, &ltsc2022]), Some(1));

        let linux = Platform {
            os_version: Some("5.15".to_owned()),
            os_features: vec!["sse4".to_owned()],
            ..entry("linux", "amd64", None)
        };
        let want = Platform {
            os_version: Some("6.1".to_owned()),
            ..parse("linux/amd64")
        };
        assert!(matches(&want, &linux));
    }

    #[test]
    fn serde_uses_oci_field_names() {
        let json = r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#;
        let p: Platform = serde_json::from_str(json).unwrap();
        assert_eq!(p, entry("linux", "arm64", Some("v8")));
        assert_eq!(serde_json::to_string(&p).unwrap(), json);

        let bare: Platform =
            serde_json::from_str(r#"{"architecture":"amd64","os":"linux"}"#).unwrap();
        assert_eq!(bare, entry("linux", "amd64", None));
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"architecture":"amd64","os":"linux"}"#
        );

        let windows_json = r#"{"architecture":"amd64","os":"windows","os.version":"10.0.17763.5329","os.features":["win32k"]}"#;
        let windows: Platform = serde_json::from_str(windows_json).unwrap();
        assert_eq!(windows.os_version.as_deref(), Some("10.0.17763.5329"));
        assert_eq!(windows.os_features, ["win32k"]);
        assert_eq!(serde_json::to_string(&windows).unwrap(), windows_json);
    }

    #[test]
    fn host_is_normalised_and_matches_itself() {
        let host = Platform::host();
        assert_eq!(host, host.normalized());
        assert!(matches(&host, &host));
        assert_eq!(parse(&host.to_string()), host);
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            assert_eq!(host.to_string(), "linux/amd64");
        }
        if cfg!(all(target_os = "linux", target_arch = "aarch64")) {
            assert_eq!(host.to_string(), "linux/arm64/v8");
        }
    }

    #[test]
    fn reads_the_arm_variant_from_cpuinfo() {
        let cases = [
            ("processor\t: 0\nCPU architecture: 7\n", Some("v7")),
            ("CPU architecture: 8\n", Some("v8")),
            ("CPU architecture: 6TEJ\n", Some("v6")),
            ("CPU architecture: 5TEJ\n", Some("v5")),
            (
                "model name\t: ARMv6-compatible processor rev 7 (v6l)\nCPU architecture: 7\n",
                Some("v6"),
            ),
            ("processor\t: 0\n", None),
            ("CPU architecture: 4T\n", None),
        ];
        for (text, expected) in cases {
            assert_eq!(arm_variant_from_cpuinfo(text), expected, "{text:?}");
        }
    }
}

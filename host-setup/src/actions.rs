//! `bind`, `unbind` and `reset`: sysfs sequences, each step reported.

use serde::Serialize;

use crate::state::{self, BindState};
use crate::{modalias, Bdf, HostError, HostRoot, Status};

const VFIO_PCI: &str = "vfio-pci";

/// One thing an action did (or skipped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Outcome.
    pub status: Status,
    /// What was done, e.g. `echo vfio-pci > .../driver_override`.
    pub what: String,
}

/// The steps of a finished action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ActionReport {
    /// The device.
    pub device: Option<Bdf>,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// The driver the device is bound to at the end.
    pub final_driver: Option<String>,
}

/// An action that stopped: the error, and the steps done before it.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ActionError {
    /// Steps done before the failure.
    pub steps: Vec<Step>,
    /// What went wrong, with what to do.
    #[source]
    pub error: HostError,
}

struct Run<'a> {
    root: &'a HostRoot,
    bdf: Bdf,
    report: ActionReport,
}

impl<'a> Run<'a> {
    fn new(root: &'a HostRoot, bdf: Bdf) -> Self {
        Run {
            root,
            bdf,
            report: ActionReport {
                device: Some(bdf),
                ..ActionReport::default()
            },
        }
    }

    fn step(&mut self, status: Status, what: impl Into<String>) {
        self.report.steps.push(Step {
            status,
            what: what.into(),
        });
    }

    fn fail(self, error: HostError) -> ActionError {
        ActionError {
            steps: self.report.steps,
            error,
        }
    }

    fn finish(mut self) -> ActionReport {
        self.report.final_driver = self.driver();
        self.report
    }

    fn dev_dir(&self) -> std::path::PathBuf {
        self.root.pci_device(&self.bdf)
    }

    fn driver(&self) -> Option<String> {
        self.root.link_name(&self.dev_dir().join("driver"))
    }

    fn ids(&self) -> String {
        let d = self.dev_dir();
        format!(
            "{}:{}",
            self.root
                .read_attr(&d.join("vendor"))
                .unwrap_or_default()
                .trim_start_matches("0x"),
            self.root
                .read_attr(&d.join("device"))
                .unwrap_or_default()
                .trim_start_matches("0x")
        )
    }

    /// Writes an attribute and logs it as `echo VALUE > PATH`.
    fn write(&mut self, path: std::path::PathBuf, value: &str) -> Result<(), HostError> {
        self.root.write_attr(&path, value)?;
        let shown = path
            .strip_prefix(&self.root.sys)
            .map(|p| format!("/sys/{}", p.display()))
            .unwrap_or_else(|_| path.display().to_string());
        self.step(Status::Ok, format!("echo {:?} > {shown}", value.trim_end()));
        Ok(())
    }

    fn require_device(&self) -> Result<(), HostError> {
        if !self.root.sys.join("bus/pci").is_dir() {
            return Err(HostError::NoSysfs(self.root.sys.clone()));
        }
        if !self.dev_dir().exists() {
            return Err(HostError::NoDevice(self.bdf));
        }
        Ok(())
    }

    fn unbind_current(&mut self) -> Result<Option<String>, HostError> {
        match self.driver() {
            Some(d) => {
                let p = self.root.pci_driver(&d).join("unbind");
                self.write(p, &self.bdf.to_string())?;
                if let Some(still) = self.driver() {
                    return Err(HostError::Unexpected(format!(
                        "{} is still bound to {still} after unbind: check `dmesg`",
                        self.bdf
                    )));
                }
                Ok(Some(d))
            }
            None => {
                self.step(Status::Ok, format!("{} has no driver to unbind", self.bdf));
                Ok(None)
            }
        }
    }

    fn clear_override(&mut self) -> Result<(), HostError> {
        let p = self.dev_dir().join("driver_override");
        if p.exists() {
            // A bare newline clears the override (what `echo > driver_override` writes).
            self.write(p, "\n")?;
        }
        Ok(())
    }

    /// The host driver to give the device back to: recorded by `bind`, else from the modalias.
    fn host_driver(&mut self) -> Option<String> {
        if let Some(st) = state::load(self.root, &self.bdf) {
            if st.ids == self.ids() {
                if let Some(d) = st.previous_driver.filter(|d| d != VFIO_PCI) {
                    self.step(Status::Ok, format!("host driver recorded by bind: {d}"));
                    return Some(d);
                }
            } else {
                self.step(
                    Status::Warn,
                    format!(
                        "ignoring the recorded state: it was for [{}], the device is now [{}]",
                        st.ids,
                        self.ids()
                    ),
                );
            }
        }
        let alias = self.root.read_attr(&self.dev_dir().join("modalias"))?;
        let Some(release) = self.root.kernel_release() else {
            self.step(
                Status::Warn,
                "cannot read the kernel release to find modules.alias",
            );
            return None;
        };
        let file = self.root.lib_modules.join(&release).join("modules.alias");
        let Ok(text) = std::fs::read_to_string(&file) else {
            self.step(
                Status::Warn,
                format!("cannot read /lib/modules/{release}/modules.alias: no host driver known"),
            );
            return None;
        };
        let modules: Vec<String> = modalias::resolve(&text, &alias)
            .into_iter()
            .filter(|m| m != "vfio_pci")
            .collect();
        match modules.first() {
            Some(m) => {
                self.step(
                    Status::Ok,
                    format!("modalias {alias} resolves to {}", modules.join(", ")),
                );
                Some(m.clone())
            }
            None => {
                self.step(
                    Status::Warn,
                    format!("no module in modules.alias matches {alias}"),
                );
                None
            }
        }
    }

    /// Binds the device to `module`'s driver (`drivers/<name>/bind`), trying `_` and `-` spellings.
    fn bind_host(&mut self, module: &str) -> Result<(), HostError> {
        let candidates = [
            module.to_string(),
            module.replace('_', "-"),
            module.replace('-', "_"),
        ];
        let Some(name) = candidates
            .iter()
            .find(|n| self.root.pci_driver(n).is_dir())
            .cloned()
        else {
            self.step(
                Status::Warn,
                format!(
                    "driver {module} is not loaded: run `modprobe {module}`, it will then claim {}",
                    self.bdf
                ),
            );
            return Ok(());
        };
        if self.driver().as_deref() == Some(name.as_str()) {
            self.step(
                Status::Ok,
                format!("{} is already bound to {name}", self.bdf),
            );
            return Ok(());
        }
        let p = self.root.pci_driver(&name).join("bind");
        self.write(p, &self.bdf.to_string())?;
        match self.driver() {
            Some(d) if d == name => Ok(()),
            other => Err(HostError::Unexpected(format!(
                "{name} did not take {} (driver now: {}): check `dmesg`",
                self.bdf,
                other.unwrap_or_else(|| "none".into())
            ))),
        }
    }
}

macro_rules! tri {
    ($run:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => return Err($run.fail(err)),
        }
    };
}

/// Hands `bdf` to vfio-pci through `driver_override` and `drivers_probe`, recording the driver it
/// replaced in the state directory. Loads no module: says `modprobe vfio-pci` when it is missing.
pub fn bind(root: &HostRoot, bdf: Bdf) -> Result<ActionReport, ActionError> {
    let mut run = Run::new(root, bdf);
    tri!(run, run.require_device());
    if !root.pci_driver(VFIO_PCI).is_dir() {
        return Err(run.fail(HostError::VfioPciMissing));
    }
    let previous = run.driver();
    if previous.as_deref() == Some(VFIO_PCI) {
        run.step(Status::Ok, format!("{bdf} is already bound to vfio-pci"));
        return Ok(run.finish());
    }
    if let Some(old) = state::load(root, &bdf) {
        run.step(
            Status::Warn,
            format!(
                "a state file from an earlier bind exists (host driver {}); keeping it",
                old.previous_driver.as_deref().unwrap_or("none")
            ),
        );
    } else {
        let st = BindState {
            bdf: bdf.to_string(),
            ids: run.ids(),
            previous_driver: previous.clone(),
        };
        tri!(run, state::save(root, &bdf, &st));
        run.step(
            Status::Ok,
            format!(
                "recorded host driver {} in {}",
                previous.as_deref().unwrap_or("(none)"),
                state::path(root, &bdf).display()
            ),
        );
    }
    let override_path = run.dev_dir().join("driver_override");
    tri!(run, run.write(override_path, VFIO_PCI));
    tri!(run, run.unbind_current());
    tri!(
        run,
        run.write(root.sys.join("bus/pci/drivers_probe"), &bdf.to_string())
    );
    match run.driver() {
        Some(d) if d == VFIO_PCI => {}
        other => {
            let now = other.unwrap_or_else(|| "none".into());
            return Err(run.fail(HostError::Unexpected(format!(
                "{bdf} is not on vfio-pci after drivers_probe (driver: {now}): check `dmesg` \
                 (a group with devices still bound elsewhere, or an unsupported device)"
            ))));
        }
    }
    let group = root.link_name(&run.dev_dir().join("iommu_group"));
    if let Some(g) = &group {
        for (m, d) in crate::doctor::group_members(root, g, &bdf).1 {
            run.step(
                Status::Warn,
                format!("group {g} also holds {m} (bound to {d}): bind it too (`hwrr bind {m}`), or VFIO will refuse to open the group"),
            );
        }
    }
    match group {
        Some(g) if root.dev.join("vfio").join(&g).exists() => {
            run.step(Status::Ok, format!("/dev/vfio/{g} is ready"))
        }
        Some(g) => run.step(
            Status::Warn,
            format!("/dev/vfio/{g} did not appear: check `dmesg` for vfio errors"),
        ),
        None => run.step(Status::Warn, format!("{bdf} has no IOMMU group")),
    }
    Ok(run.finish())
}

/// Takes `bdf` off vfio-pci, clears `driver_override` and gives it back to its host driver (the
/// recorded one, else the one its modalias resolves to); forgets the recorded state.
pub fn unbind(root: &HostRoot, bdf: Bdf) -> Result<ActionReport, ActionError> {
    let mut run = Run::new(root, bdf);
    tri!(run, run.require_device());
    match run.driver().as_deref() {
        Some(VFIO_PCI) => {
            tri!(run, run.unbind_current());
        }
        Some(d) => {
            let d = d.to_string();
            run.step(
                Status::Ok,
                format!("{bdf} is bound to {d}, not vfio-pci: nothing to unbind"),
            );
            tri!(run, run.clear_override());
            tri!(run, state::remove(root, &bdf));
            return Ok(run.finish());
        }
        None => run.step(Status::Ok, format!("{bdf} has no driver")),
    }
    tri!(run, run.clear_override());
    if let Some(host) = run.host_driver() {
        tri!(run, run.bind_host(&host));
    }
    tri!(run, state::remove(root, &bdf));
    Ok(run.finish())
}

/// The recovery sequence for a device left in a bad state: unbind, function reset (`reset`
/// attribute, naming the `reset_method`), `remove`, bus `rescan`, clear `driver_override`, rebind
/// the host driver. Undoes a `new_id` registration that grabs the device again after the rescan.
pub fn reset(root: &HostRoot, bdf: Bdf) -> Result<ActionReport, ActionError> {
    let mut run = Run::new(root, bdf);
    tri!(run, run.require_device());
    let ids = run.ids();
    // The host driver must be known before the device disappears (its state and modalias).
    let host = run.host_driver();
    tri!(run, run.unbind_current());

    let dir = run.dev_dir();
    if dir.join("reset").exists() {
        let method = root
            .read_attr(&dir.join("reset_method"))
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "unknown (no reset_method attribute)".into());
        run.step(Status::Ok, format!("reset method: {method}"));
        tri!(run, run.write(dir.join("reset"), "1"));
    } else {
        run.step(
            Status::Warn,
            format!("{bdf} has no reset attribute (no FLR, PM or bus reset): skipped the function reset"),
        );
    }
    tri!(run, run.write(dir.join("remove"), "1"));
    if dir.exists() {
        return Err(run.fail(HostError::Unexpected(format!(
            "{bdf} is still in sysfs after remove: check `dmesg`"
        ))));
    }
    tri!(run, run.write(root.sys.join("bus/pci/rescan"), "1"));
    if !dir.exists() {
        return Err(run.fail(HostError::Unexpected(format!(
            "{bdf} did not come back after the rescan: check `dmesg`; a reboot may be needed"
        ))));
    }
    tri!(run, run.clear_override());

    if run.driver().as_deref() == Some(VFIO_PCI) && host.is_some() {
        // A dynamic id (new_id) outlives remove/rescan and lets vfio-pci grab the device again.
        run.step(
            Status::Warn,
            "vfio-pci claimed the device again after the rescan: a `new_id` entry is registered",
        );
        let (v, d) = ids.split_once(':').unwrap_or(("", ""));
        let p = root.pci_driver(VFIO_PCI).join("remove_id");
        tri!(run, run.write(p, &format!("{v} {d}")));
        tri!(run, run.unbind_current());
    }
    match host {
        Some(h) => tri!(run, run.bind_host(&h)),
        None => run.step(
            Status::Warn,
            "no host driver known: the device stays unbound (bind one with `echo BDF > /sys/bus/pci/drivers/NAME/bind`)",
        ),
    }
    tri!(run, state::remove(root, &bdf));
    Ok(run.finish())
}

//! A data owner: a model owner uploads, lists, deletes and fetches correct counts; a client
//! classifies. The same class local and across hosts (the engine's `RemoteOwner`).

use std::sync::{Arc, Mutex};

use engine::io::{declared_bounds, open_model, open_onnx_bytes, OpenedModel, UnusedTensors};
use engine::nn::range::DEFAULT_INPUT_BOUND;
use engine::service::client::{RemoteOwner, RequestStats};
use engine::wire::control::ModelInfo as EngineModelInfo;
use engine::FixedPoint;
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use crate::arrays::{floats, labels as int_labels};
use crate::errors::{bad_input, IntoPy};
use crate::progress::Progress;
use crate::services::{lock, Services};

/// A data owner connected to alice and bob (see `LocalDeployment.model_owner`,
/// `LocalDeployment.client` and `connect`). One request at a time per owner: calls from
/// several threads wait for each other; use one owner per thread for concurrent requests.
#[pyclass(frozen, module = "secure_serving")]
pub struct Owner {
    inner: Arc<Mutex<RemoteOwner>>,
    role: String,
    name: String,
    model_owner: bool,
    /// Keeps an in-process deployment's services running while this owner lives (dropped
    /// after `inner`, so this owner's connections close first).
    local: Option<Arc<Services>>,
}

impl Owner {
    /// Wrap `o` (of `local`, when in-process).
    pub fn new(o: RemoteOwner, local: Option<Arc<Services>>) -> Owner {
        let role = o.role().clone();
        Owner {
            role: role.to_string(),
            name: role.owner_name().unwrap_or_default().to_string(),
            model_owner: matches!(role, engine::deploy::Role::ModelOwner(_)),
            inner: Arc::new(Mutex::new(o)),
            local,
        }
    }

    /// The engine's owner (for the deployment to close its connections).
    pub fn shared(&self) -> &Arc<Mutex<RemoteOwner>> {
        &self.inner
    }

    /// Fail at once when the in-process deployment is closed.
    fn check_open(&self) -> PyResult<()> {
        match &self.local {
            Some(s) => s.running().map(|_| ()),
            None => Ok(()),
        }
    }

    /// Run `f` on the engine's owner without the GIL.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut RemoteOwner) -> engine::Result<T> + Send,
    ) -> PyResult<T> {
        self.check_open()?;
        py.detach(|| f(&mut lock(&self.inner))).py_err()
    }
}

/// The model a Python object stands for: a path (ONNX, or safetensors with `arch`), an ONNX
/// file's bytes, or a `torch.nn.Module` with an example input (exported to ONNX in memory).
fn open_py_model(
    py: Python<'_>,
    model: &Bound<'_, PyAny>,
    example_input: Option<&Bound<'_, PyAny>>,
    arch: Option<&str>,
    prefix: &str,
    unused: UnusedTensors,
) -> PyResult<OpenedModel> {
    let onnx_only = |what: &str| -> PyResult<()> {
        match arch {
            Some(_) => Err(bad_input(format!(
                "arch applies to safetensors files; {what} carries its graph"
            ))),
            None => Ok(()),
        }
    };
    let bytes = if model.is_instance_of::<PyBytes>() {
        Some(model.clone())
    } else if model.is_instance_of::<PyByteArray>() || model.is_instance_of::<PyMemoryView>() {
        Some(py.import("builtins")?.getattr("bytes")?.call1((model,))?)
    } else {
        None
    };
    if let Some(b) = bytes {
        onnx_only("an ONNX file")?;
        let b = b.cast::<PyBytes>()?.as_bytes();
        return py.detach(|| open_onnx_bytes("ONNX bytes", b)).py_err();
    }
    if let Ok(path) = model.extract::<std::path::PathBuf>() {
        let path = path.to_string_lossy().into_owned();
        return py
            .detach(|| open_model(&path, arch, prefix, unused))
            .py_err();
    }
    if model.hasattr("state_dict")? && model.hasattr("forward")? {
        onnx_only("a torch module")?;
        let example = example_input.ok_or_else(|| {
            bad_input("a torch.nn.Module needs example_input (one batch of inputs) to be exported")
        })?;
        let helper = py.import("secure_serving._torch")?;
        let exported = helper.call_method1("to_onnx", (model, example))?;
        let b = exported.cast::<PyBytes>()?.as_bytes();
        return py
            .detach(|| open_onnx_bytes("the exported torch module", b))
            .py_err();
    }
    Err(bad_input(format!(
        "model must be a path (.onnx or .safetensors), ONNX bytes or a torch.nn.Module, not {}",
        model.get_type().name()?
    )))
}

#[pymethods]
impl Owner {
    /// Upload `model` under `name` (model owners only). `model`: a path (`.onnx`, or
    /// `.safetensors` with `arch`), ONNX bytes, or a torch.nn.Module with `example_input`.
    /// The range analysis runs here first and refuses (OverflowDetected) a model that could
    /// overflow for inputs within `input_bound`; `calibrate` (representative inputs) measures
    /// hidden-layer bounds instead, checked inside the secure computation. `progress`: a
    /// callable (done, total) or a tqdm bar, over the parameters shared.
    #[pyo3(signature = (name, model, *, example_input = None, arch = None, prefix = "",
        frac_bits = 16, input_bound = DEFAULT_INPUT_BOUND, calibrate = None,
        calibration_margin = 2.0, allow_unused_tensors = false, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn upload(
        &self,
        py: Python<'_>,
        name: &str,
        model: &Bound<'_, PyAny>,
        example_input: Option<&Bound<'_, PyAny>>,
        arch: Option<&str>,
        prefix: &str,
        frac_bits: u32,
        input_bound: f64,
        calibrate: Option<&Bound<'_, PyAny>>,
        calibration_margin: f64,
        allow_unused_tensors: bool,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<UploadReport> {
        self.check_open()?;
        let fx = FixedPoint::new(frac_bits).py_err()?;
        let mut progress = Progress::new(progress)?;
        let unused = match allow_unused_tensors {
            true => UnusedTensors::Allow,
            false => UnusedTensors::Refuse,
        };
        let opened = open_py_model(py, model, example_input, arch, prefix, unused)?;
        let source = opened.source.as_ref();
        let cal = match calibrate {
            Some(c) => Some(floats(c, "calibrate")?),
            None => None,
        };
        if let Some(c) = &cal {
            check_shape(c.shape(), &source.input_shape(), "calibrate")?;
        }
        let cal_values = cal.as_ref().map(|c| c.values());
        let (plan, stats) = self.with(py, |o| {
            let bounds = declared_bounds(
                source,
                input_bound,
                cal_values.map(|v| ("calibrate", v)),
                calibration_margin,
            )?;
            o.upload(name, source, &fx, &bounds, &mut |d, t| {
                progress.report(d, t)
            })
        })?;
        progress.finish()?;
        Ok(UploadReport {
            name: name.to_string(),
            layers: plan.layers.len(),
            input_shape: plan.input_shape().to_vec(),
            classes: plan.out_features(),
            parameters: source.parameter_count(),
            range: plan.range.as_ref().map(|r| r.summary()),
            notes: opened.notes,
            seconds: stats.seconds,
            bytes_sent: stats.bytes_sent,
            request_id: stats.request,
        })
    }

    /// Classify `x` ([N, ...] float32/float64, the model's sample shape after N) with model
    /// `name`, `batch` rows at a time; the predictions are revealed to this client only. With
    /// `labels` ([N] integers) the correct count stays shared at the parties for the model
    /// owner, under `request_id`. `progress`: a callable (done, total) or a tqdm bar, over rows.
    #[pyo3(signature = (name, x, labels = None, *, batch = 64, progress = None))]
    fn classify(
        &self,
        py: Python<'_>,
        name: &str,
        x: &Bound<'_, PyAny>,
        labels: Option<&Bound<'_, PyAny>>,
        batch: usize,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Classification> {
        let data = floats(x, "x")?;
        let labels = match labels {
            Some(l) => Some(int_labels(l, "labels")?),
            None => None,
        };
        let mut progress = Progress::new(progress)?;
        let info = self.with(py, |o| o.model_info(name))?;
        check_shape(data.shape(), &info.input_shape, "x")?;
        let values = data.values();
        let r = self.with(py, |o| {
            o.classify_observed(name, values, labels.as_deref(), batch, &mut |d, t| {
                progress.report(d, t)
            })
        })?;
        progress.finish()?;
        Ok(Classification::new(
            PyArray1::from_vec(py, r.predictions).unbind(),
            &r.stats,
            labels.is_some(),
        ))
    }

    /// The correct count of classify request `request_id` (its model's owner only), revealed
    /// to this model owner alone, once.
    fn score(&self, py: Python<'_>, request_id: u64) -> PyResult<u64> {
        self.with(py, |o| o.score(request_id))
    }

    /// The models the parties serve.
    fn models(&self, py: Python<'_>) -> PyResult<Vec<ModelInfo>> {
        let list = self.with(py, |o| o.models())?;
        Ok(list.into_iter().map(ModelInfo::from).collect())
    }

    /// Delete model `name` (its owner only) at alice, bob and the dealer.
    fn delete(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.with(py, |o| o.delete(name))
    }

    /// For the overhead benchmark (python/bench.py): the same classification through the
    /// engine's Rust API alone, `repeats` times, each timed in Rust around
    /// `RemoteOwner::classify` (the rows converted once, before the first); seconds per call.
    #[pyo3(signature = (name, x, labels = None, *, batch = 64, repeats = 1))]
    fn _time_rust_classify(
        &self,
        py: Python<'_>,
        name: &str,
        x: &Bound<'_, PyAny>,
        labels: Option<&Bound<'_, PyAny>>,
        batch: usize,
        repeats: usize,
    ) -> PyResult<Vec<f64>> {
        let data = floats(x, "x")?;
        let labels = match labels {
            Some(l) => Some(int_labels(l, "labels")?),
            None => None,
        };
        let values = data.values();
        self.with(py, |o| {
            (0..repeats)
                .map(|_| {
                    let t = std::time::Instant::now();
                    o.classify(name, values, labels.as_deref(), batch)?;
                    Ok(t.elapsed().as_secs_f64())
                })
                .collect()
        })
    }

    /// This data owner's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a model owner (else a client).
    #[getter]
    fn is_model_owner(&self) -> bool {
        self.model_owner
    }

    fn __repr__(&self) -> String {
        format!("Owner({})", self.role)
    }
}

/// Check that an array of `shape` holds samples of the model's `sample` shape.
fn check_shape(shape: &[usize], sample: &[usize], what: &str) -> PyResult<()> {
    engine::io::check_input_shape(shape, sample)
        .map(|_| ())
        .map_err(|m| bad_input(format!("{what}: {m}")))
}

/// What a classification returned to the client.
#[pyclass(frozen, get_all, module = "secure_serving")]
pub struct Classification {
    /// Predicted class of every row (int64 [N]), revealed to this client only.
    predictions: Py<PyArray1<i64>>,
    /// The request's id: the model owner's `score(request_id)` fetches the correct count.
    request_id: u64,
    /// Wall time of the request in seconds.
    seconds: f64,
    /// Communication rounds counted by (alice, bob).
    rounds: (u64, u64),
    /// Bytes sent by (alice, bob) in the request.
    bytes_sent: (u64, u64),
    /// Messages sent by (alice, bob).
    messages: (u64, u64),
    /// Bytes this client sent (its shares) and received (the predictions' shares).
    client_bytes: (u64, u64),
    /// Whether labels were given (a correct count waits for the model owner).
    scored: bool,
}

impl Classification {
    fn new(predictions: Py<PyArray1<i64>>, s: &RequestStats, scored: bool) -> Self {
        Classification {
            predictions,
            request_id: s.request,
            seconds: s.seconds,
            rounds: (s.party_rounds[0], s.party_rounds[1]),
            bytes_sent: (s.party_bytes[0], s.party_bytes[1]),
            messages: (s.party_messages[0], s.party_messages[1]),
            client_bytes: (s.bytes_sent, s.bytes_received),
            scored,
        }
    }
}

#[pymethods]
impl Classification {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Classification({} predictions, request_id={}, {:.3} ms, rounds={:?}, bytes_sent={:?})",
            self.predictions.bind(py).len().unwrap_or_default(),
            self.request_id,
            self.seconds * 1e3,
            self.rounds,
            self.bytes_sent
        )
    }
}

/// What an upload shared.
#[pyclass(frozen, get_all, module = "secure_serving")]
pub struct UploadReport {
    /// The name the model is served under.
    name: String,
    /// Layers of the shared model.
    layers: usize,
    /// Per-sample input shape.
    input_shape: Vec<usize>,
    /// Classes.
    classes: usize,
    /// Parameters shared.
    parameters: usize,
    /// The range analysis' one-line summary (headroom, logit error bound).
    range: Option<String>,
    /// What the import changed that leaves the predictions as they are.
    notes: Vec<String>,
    /// Wall time in seconds.
    seconds: f64,
    /// Bytes this model owner sent (the model's shares).
    bytes_sent: u64,
    /// The upload request's id (in the services' logs).
    request_id: u64,
}

#[pymethods]
impl UploadReport {
    fn __repr__(&self) -> String {
        format!(
            "UploadReport('{}', {} layers, input {:?}, {} classes, {:.3} s)",
            self.name, self.layers, self.input_shape, self.classes, self.seconds
        )
    }
}

/// A model the parties serve.
#[pyclass(frozen, get_all, module = "secure_serving")]
pub struct ModelInfo {
    /// Its name.
    name: String,
    /// The model owner that uploaded it (`None` in a client's listing: only a model's own
    /// owner is told).
    owner: Option<String>,
    /// Per-sample input shape.
    input_shape: Vec<usize>,
    /// Classes.
    classes: usize,
    /// Fixed-point fractional bits.
    frac_bits: u32,
    /// Declared input bound: every feature within ±input_bound.
    input_bound: f64,
    /// Parameters (`None` in a client's listing: only a model's own owner is told).
    parameters: Option<usize>,
}

impl From<EngineModelInfo> for ModelInfo {
    fn from(m: EngineModelInfo) -> Self {
        ModelInfo {
            name: m.name,
            owner: m.owner,
            input_shape: m.input_shape,
            classes: m.classes,
            frac_bits: m.frac_bits,
            input_bound: m.input_bound,
            parameters: m.parameters,
        }
    }
}

#[pymethods]
impl ModelInfo {
    fn __repr__(&self) -> String {
        let owner = match &self.owner {
            Some(o) => format!(", owner='{o}'"),
            None => String::new(),
        };
        format!(
            "ModelInfo('{}'{owner}, input {:?}, {} classes)",
            self.name, self.input_shape, self.classes
        )
    }
}

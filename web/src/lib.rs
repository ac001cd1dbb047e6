//! hydralora in the browser. [`session`] is the fine-tuning session in plain async Rust;
//! [`Studio`] hands it to JavaScript (`web/www/app.js`), each long call a Promise.
//!
//! Built for `wasm32-unknown-unknown` by `web/build.sh`, where wgpu runs on the browser's
//! WebGPU; it compiles natively too, so the workspace's clippy and tests cover it.

#![warn(missing_docs)]

pub mod session;

use std::cell::RefCell;
use std::rc::Rc;

use session::{Method, RunSettings, Session};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

/// The page's handle on a [`Session`]. A call that is still running holds the session, so a
/// second call made meanwhile is refused ("busy") instead of interleaving with it.
#[wasm_bindgen]
pub struct Studio {
    session: Rc<RefCell<Option<Session>>>,
}

use js_sys::Promise;

fn js_error(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&e.to_string())
}

fn to_json(value: &impl serde::Serialize) -> JsValue {
    JsValue::from_str(&serde_json::to_string(value).expect("page values serialise"))
}

impl Studio {
    /// Runs `work` on the session, taken out for its duration.
    fn with_session<F, Fut>(&self, work: F) -> Promise
    where
        F: FnOnce(Session) -> Fut + 'static,
        Fut: std::future::Future<Output = (Session, Result<JsValue, JsValue>)> + 'static,
    {
        let slot = self.session.clone();
        future_to_promise(async move {
            let session = slot
                .borrow_mut()
                .take()
                .ok_or_else(|| js_error("busy: the previous call has not finished"))?;
            let (session, result) = work(session).await;
            *slot.borrow_mut() = Some(session);
            result
        })
    }
}

#[wasm_bindgen]
impl Studio {
    /// Opens WebGPU; rejects with the reason when the browser has no WebGPU adapter.
    pub async fn open() -> Result<Studio, JsValue> {
        console_panics();
        let session = Session::open().await.map_err(js_error)?;
        Ok(Studio {
            session: Rc::new(RefCell::new(Some(session))),
        })
    }

    /// The adapter, backend, features and limits, in words.
    #[wasm_bindgen(js_name = deviceInfo)]
    pub fn device_info(&self) -> String {
        (self.session.borrow().as_ref()).map_or("busy".into(), Session::device_info)
    }

    /// Takes the base model from its files (see [`Session::load_base`]).
    #[wasm_bindgen(js_name = loadBase)]
    pub fn load_base(
        &self,
        config_json: &[u8],
        weights: Vec<u8>,
        tokenizer_json: Option<Vec<u8>>,
    ) -> Result<(), JsValue> {
        let mut slot = self.session.borrow_mut();
        let session = slot.as_mut().ok_or_else(|| js_error("busy"))?;
        (session.load_base(config_json, weights, tokenizer_json.as_deref())).map_err(js_error)
    }

    /// Starts training the demo's small base from scratch for `steps` steps.
    #[wasm_bindgen(js_name = startBaseTraining)]
    pub fn start_base_training(&self, steps: usize) -> Result<(), JsValue> {
        let mut slot = self.session.borrow_mut();
        let session = slot.as_mut().ok_or_else(|| js_error("busy"))?;
        session.start_base_training(steps).map_err(js_error)
    }

    /// One step of the base's training: resolves to the step's statistics as JSON.
    #[wasm_bindgen(js_name = baseStep)]
    pub fn base_step(&self) -> Promise {
        self.with_session(|mut s| async move {
            let r = s.base_step().await;
            (s, r.map(|st| to_json(&st)).map_err(js_error))
        })
    }

    /// The base's `model.safetensors` (for example a base trained in the page).
    #[wasm_bindgen(js_name = baseWeights)]
    pub fn base_weights(&self) -> Option<Vec<u8>> {
        (self.session.borrow().as_ref())?
            .base_weights()
            .map(<[u8]>::to_vec)
    }

    /// Starts a fine-tuning run: `method` `lora` or `hydra`; `jsonl` the user's data, or
    /// undefined for the demo's four tasks.
    #[wasm_bindgen(js_name = startRun)]
    pub fn start_run(
        &self,
        method: &str,
        steps: usize,
        batch: usize,
        seed: u32,
        jsonl: Option<String>,
    ) -> Result<(), JsValue> {
        let settings = RunSettings {
            method: Method::parse(method).map_err(js_error)?,
            steps,
            batch,
            seed: u64::from(seed),
        };
        let mut slot = self.session.borrow_mut();
        let session = slot.as_mut().ok_or_else(|| js_error("busy"))?;
        session
            .start_run(&settings, jsonl.as_deref())
            .map_err(js_error)
    }

    /// One optimizer step: resolves to its statistics as JSON (`step`, `loss`, `lr`,
    /// `grad_norm`, `tokens`, `seconds`).
    pub fn step(&self) -> Promise {
        self.with_session(|mut s| async move {
            let r = s.step().await;
            (s, r.map(|st| to_json(&st)).map_err(js_error))
        })
    }

    /// Greedy continuation of `prompt`: resolves to the new text.
    pub fn generate(&self, prompt: String, max_tokens: usize) -> Promise {
        self.with_session(move |s| async move {
            let r = s.generate(&prompt, max_tokens).await;
            (s, r.map(|t| JsValue::from_str(&t)).map_err(js_error))
        })
    }

    /// The run's logits for `prompt` (`[T, V]` row-major): resolves to a Float32Array.
    pub fn logits(&self, prompt: String) -> Promise {
        self.with_session(move |s| async move {
            let r = s.logits(&prompt).await;
            let array = r.map(|v| js_sys::Float32Array::from(&v[..]).into());
            (s, array.map_err(js_error))
        })
    }

    /// The router heatmap as JSON (`categories`, `gates`), or null for a LoRA run.
    pub fn heatmap(&self) -> Promise {
        self.with_session(|mut s| async move {
            let r = s.heatmap().await;
            (s, r.map(|h| to_json(&h)).map_err(js_error))
        })
    }

    /// The adapter's PEFT files: resolves to `[adapter_model.safetensors bytes,
    /// adapter_config.json text]`.
    #[wasm_bindgen(js_name = adapterFiles)]
    pub fn adapter_files(&self) -> Promise {
        self.with_session(|s| async move {
            let r = s.adapter_files().await.map(|files| {
                let pair = js_sys::Array::new();
                pair.push(&js_sys::Uint8Array::from(&files.weights[..]));
                pair.push(&JsValue::from_str(&files.config));
                JsValue::from(pair)
            });
            (s, r.map_err(js_error))
        })
    }

    /// The kernels compiled so far (`variant:entry`), as JSON.
    #[wasm_bindgen(js_name = kernelsUsed)]
    pub fn kernels_used(&self) -> String {
        let used = (self.session.borrow().as_ref()).map(Session::kernels_used);
        serde_json::to_string(&used.unwrap_or_default()).expect("strings serialise")
    }

    /// Compiles every kernel variant the device can run: resolves to the compiler's
    /// complaints as JSON (`[]` when it accepts them all).
    #[wasm_bindgen(js_name = checkEveryKernel)]
    pub fn check_every_kernel(&self) -> Promise {
        self.with_session(|s| async move {
            let failures = s.check_every_kernel().await;
            (s, Ok(to_json(&failures)))
        })
    }
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(message: &str);
}

/// A Rust panic shows in the browser's console with its message (else only "unreachable").
fn console_panics() {
    if cfg!(target_arch = "wasm32") {
        std::panic::set_hook(Box::new(|info| console_error(&info.to_string())));
    }
}

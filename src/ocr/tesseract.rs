//! Tesseract through its C API (`tesseract/capi.h`), declared by hand because
//! bindgen needs libclang. Owns every `unsafe` call into libtesseract and the
//! lifetime of its handles. Promises: a [`TesseractEngine`] owns one
//! `TessBaseAPI` (plus, optionally, one OSD handle), is `!Send` (it stays on
//! the thread that created it, as Tesseract handles are not thread-safe),
//! frees every string Tesseract returns, clears per-page state after each
//! page, and turns init failures into an error naming the missing
//! `*.traineddata` file and the Debian package that ships it.
//!
//! Linking is done by `build.rs` (pkg-config `tesseract` and `lept`).
//! Debian's libtesseract is built with OpenMP: see [`super::omp_thread_limit_ok`].

use std::ffi::{c_char, c_float, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use image::GrayImage;

use super::engine::{OcrEngine, Orientation, Recognized};
use super::OcrError;

/// Raw declarations from `/usr/include/tesseract/capi.h` (Tesseract 4.1–5.x).
/// C enums are passed as `c_int`; `BOOL` is `int`.
#[allow(non_snake_case)]
mod ffi {
    use std::ffi::{c_char, c_float, c_int};

    /// Opaque `TessBaseAPI`.
    #[repr(C)]
    pub struct TessBaseAPI {
        _private: [u8; 0],
    }

    /// Opaque `ETEXT_DESC`: Tesseract's progress monitor, which carries a deadline.
    #[repr(C)]
    pub struct EtextDesc {
        _private: [u8; 0],
    }

    pub const PSM_OSD_ONLY: c_int = 0;

    extern "C" {
        pub fn TessVersion() -> *const c_char;
        pub fn TessDeleteText(text: *const c_char);
        pub fn TessDeleteTextArray(arr: *mut *mut c_char);
        pub fn TessBaseAPIGetLoadedLanguagesAsVector(
            handle: *const TessBaseAPI,
        ) -> *mut *mut c_char;
        pub fn TessBaseAPICreate() -> *mut TessBaseAPI;
        pub fn TessBaseAPIDelete(handle: *mut TessBaseAPI);
        pub fn TessBaseAPIInit3(
            handle: *mut TessBaseAPI,
            datapath: *const c_char,
            language: *const c_char,
        ) -> c_int;
        pub fn TessBaseAPISetPageSegMode(handle: *mut TessBaseAPI, mode: c_int);
        pub fn TessBaseAPISetVariable(
            handle: *mut TessBaseAPI,
            name: *const c_char,
            value: *const c_char,
        ) -> c_int;
        pub fn TessBaseAPISetImage(
            handle: *mut TessBaseAPI,
            imagedata: *const u8,
            width: c_int,
            height: c_int,
            bytes_per_pixel: c_int,
            bytes_per_line: c_int,
        );
        pub fn TessBaseAPISetSourceResolution(handle: *mut TessBaseAPI, ppi: c_int);
        pub fn TessBaseAPIRecognize(handle: *mut TessBaseAPI, monitor: *mut EtextDesc) -> c_int;
        pub fn TessBaseAPIGetUTF8Text(handle: *mut TessBaseAPI) -> *mut c_char;
        pub fn TessMonitorCreate() -> *mut EtextDesc;
        pub fn TessMonitorDelete(monitor: *mut EtextDesc);
        pub fn TessMonitorSetDeadlineMSecs(monitor: *mut EtextDesc, deadline: c_int);
        pub fn TessBaseAPIMeanTextConf(handle: *mut TessBaseAPI) -> c_int;
        pub fn TessBaseAPIClear(handle: *mut TessBaseAPI);
        pub fn TessBaseAPIDetectOrientationScript(
            handle: *mut TessBaseAPI,
            orient_deg: *mut c_int,
            orient_conf: *mut c_float,
            script_name: *mut *const c_char,
            script_conf: *mut c_float,
        ) -> c_int;
    }
}

/// Tesseract page segmentation modes we expose (values from `capi.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSegMode {
    /// Fully automatic layout analysis, no orientation detection (PSM 3,
    /// Tesseract's default). Right for answer pages.
    Auto = 3,
    /// Layout analysis with Tesseract's own orientation/script detection (PSM 1).
    AutoOsd = 1,
    /// One uniform block of text (PSM 6).
    SingleBlock = 6,
    /// As much text as possible in no particular order (PSM 11).
    SparseText = 11,
}

/// Resolutions Tesseract considers credible (`kMinCredibleResolution`,
/// `kMaxCredibleResolution`); outside them it warns and substitutes 70.
const MIN_PPI: u32 = 70;
const MAX_PPI: u32 = 2400;

/// How long one page may take by default. Tesseract reads a page in 0.5–3 s here, but on
/// some photos full of shadow and noise it spent minutes (194 s on one simulated phone
/// photo, OCR.md) taking specks for letters.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(30);

/// Tesseract's engine construction reads and writes process-global parameters
/// (and `debug_file` below is one), so engines are created one at a time.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// The installed libtesseract version, e.g. `"5.3.0"`.
pub fn version() -> String {
    // SAFETY: TessVersion takes no arguments and returns a pointer to a static
    // NUL-terminated string (or, defensively, null), which we only read.
    unsafe {
        let v = ffi::TessVersion();
        if v.is_null() {
            return String::from("unknown");
        }
        CStr::from_ptr(v).to_string_lossy().into_owned()
    }
}

/// A Tesseract instance bound to the current thread.
pub struct TesseractEngine {
    api: Handle,
    osd: Option<Handle>,
    name: String,
    time_limit: Option<Duration>,
}

/// Owns one `TessBaseAPI*`; deleting it on drop. `NonNull` keeps it `!Send`.
struct Handle(NonNull<ffi::TessBaseAPI>);

impl Handle {
    fn create() -> Result<Self, OcrError> {
        // SAFETY: TessBaseAPICreate has no preconditions; it returns a fresh
        // heap object (null only on allocation failure, checked here).
        let raw = unsafe { ffi::TessBaseAPICreate() };
        NonNull::new(raw)
            .map(Handle)
            .ok_or_else(|| OcrError::EngineInit("TessBaseAPICreate returned null".into()))
    }

    fn ptr(&self) -> *mut ffi::TessBaseAPI {
        self.0.as_ptr()
    }

    fn set_variable(&mut self, name: &str, value: &str) -> Result<(), OcrError> {
        let n = cstring(name)?;
        let v = cstring(value)?;
        // SAFETY: the handle is live and owned by us; both strings are valid
        // NUL-terminated C strings that outlive the call (Tesseract copies them).
        let ok = unsafe { ffi::TessBaseAPISetVariable(self.ptr(), n.as_ptr(), v.as_ptr()) };
        if ok == 0 {
            return Err(OcrError::Engine(format!(
                "Tesseract has no variable {name:?} (or rejected value {value:?})"
            )));
        }
        Ok(())
    }

    /// Hands a copy of `page` to Tesseract (SetImage copies the pixels into
    /// its own Pix), with the resolution if known. Returns a guard that
    /// clears the page state on every exit path.
    fn set_page(&mut self, page: &GrayImage, ppi: Option<u32>) -> Result<PageGuard<'_>, OcrError> {
        let (w, h) = page.dimensions();
        let width = c_int::try_from(w).map_err(|_| OcrError::Engine("page too wide".into()))?;
        let height = c_int::try_from(h).map_err(|_| OcrError::Engine("page too tall".into()))?;
        // SAFETY: handle is live; `page` is a tightly packed 8-bit buffer of
        // exactly width*height bytes (GrayImage invariant), so bytes_per_line
        // = width and bytes_per_pixel = 1 describe it; Tesseract copies the
        // data before returning, so the borrow only needs to last the call.
        unsafe {
            ffi::TessBaseAPISetImage(self.ptr(), page.as_raw().as_ptr(), width, height, 1, width);
        }
        if let Some(ppi) = ppi {
            let ppi = ppi.clamp(MIN_PPI, MAX_PPI) as c_int;
            // SAFETY: handle is live and has an image (required by the API).
            unsafe { ffi::TessBaseAPISetSourceResolution(self.ptr(), ppi) };
        }
        Ok(PageGuard(self))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: we own the pointer, created by TessBaseAPICreate and not yet
        // deleted; Delete runs End() and frees it. No other copy exists.
        unsafe { ffi::TessBaseAPIDelete(self.ptr()) };
    }
}

/// Clears Tesseract's per-page state (image copy, layout, results) on drop.
struct PageGuard<'a>(&'a mut Handle);

impl Drop for PageGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: handle is live; Clear only frees per-page data and is valid
        // in any state after Init.
        unsafe { ffi::TessBaseAPIClear(self.0.ptr()) };
    }
}

impl TesseractEngine {
    /// Starts Tesseract for `languages` (`"eng"`, `"eng+hin"`), loading
    /// `<lang>.traineddata` from `datapath` (the tessdata directory itself),
    /// or from `$TESSDATA_PREFIX` / Tesseract's built-in default when `None`.
    /// Takes ~0.1–0.3 s; do it once per thread.
    pub fn new(languages: &str, datapath: Option<&Path>) -> Result<Self, OcrError> {
        validate_languages(languages)?;
        let lang_c = cstring(languages)?;
        let datapath_c = datapath_cstring(datapath)?;

        let _init = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut api = Handle::create()?;
        // SAFETY: handle is live and not yet initialised; datapath is null or
        // a valid C string, language a valid C string, both outliving the call.
        let rc = unsafe {
            ffi::TessBaseAPIInit3(
                api.ptr(),
                datapath_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                lang_c.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(OcrError::EngineInit(missing_data_message(
                languages, datapath,
            )));
        }
        // Tesseract 5 succeeds when *some* of several languages load
        // ("eng+hin" without hin.traineddata runs English only): insist on all.
        let loaded = api.loaded_languages();
        if languages.split('+').any(|l| !loaded.iter().any(|x| x == l)) {
            return Err(OcrError::EngineInit(missing_data_message(
                languages, datapath,
            )));
        }
        api.set_page_seg_mode(PageSegMode::Auto);
        // Tesseract prints warnings ("Estimating resolution as …", "Too few
        // characters") to stderr; in a server they are noise per page.
        api.set_variable("debug_file", "/dev/null")?;
        Ok(Self {
            api,
            osd: None,
            name: format!("tesseract:{languages}"),
            time_limit: Some(DEFAULT_TIME_LIMIT),
        })
    }

    /// Adds a second handle running Tesseract's orientation detector, used
    /// by [`OcrEngine::detect_orientation`]. Needs `osd.traineddata`
    /// (Debian: `tesseract-ocr-osd`) in the tessdata directory. On error the
    /// engine keeps working without orientation detection.
    pub fn enable_orientation_detection(
        &mut self,
        datapath: Option<&Path>,
    ) -> Result<(), OcrError> {
        let datapath_c = datapath_cstring(datapath)?;
        let lang = cstring("osd")?;
        let _init = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut osd = Handle::create()?;
        // SAFETY: as in `new`: live fresh handle, valid C strings.
        let rc = unsafe {
            ffi::TessBaseAPIInit3(
                osd.ptr(),
                datapath_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                lang.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(OcrError::EngineInit(missing_data_message("osd", datapath)));
        }
        osd.set_page_seg_mode_raw(ffi::PSM_OSD_ONLY);
        self.osd = Some(osd);
        Ok(())
    }

    /// True when [`Self::enable_orientation_detection`] succeeded.
    pub fn detects_orientation(&self) -> bool {
        self.osd.is_some()
    }

    /// Sets a Tesseract parameter (see `tesseract --print-parameters`). Call
    /// it from the engine factory: a few parameters (e.g. `debug_file`) are
    /// process-global in libtesseract and racy to change while other
    /// engines run.
    pub fn set_variable(&mut self, name: &str, value: &str) -> Result<(), OcrError> {
        self.api.set_variable(name, value)
    }

    /// How long recognising one page may take before Tesseract stops and
    /// [`OcrEngine::recognize`] fails with [`OcrError::TimedOut`]; `None`: no limit.
    /// Default [`DEFAULT_TIME_LIMIT`]. Tesseract checks it between words, so a page
    /// overruns by at most one word's work; layout analysis before the first word is
    /// not covered (it is a fraction of the time on every page measured).
    pub fn set_time_limit(&mut self, limit: Option<Duration>) {
        self.time_limit = limit;
    }

    /// Chooses Tesseract's page segmentation mode (default [`PageSegMode::Auto`]).
    pub fn set_page_seg_mode(&mut self, mode: PageSegMode) {
        self.api.set_page_seg_mode(mode);
    }
}

impl Handle {
    /// Languages Tesseract actually loaded, e.g. `["eng", "hin"]`.
    fn loaded_languages(&self) -> Vec<String> {
        // SAFETY: handle is live and initialised; the call returns a new[]
        // array of new[] strings terminated by null (or null), which we read
        // and then free exactly once with TessDeleteTextArray.
        unsafe {
            let arr = ffi::TessBaseAPIGetLoadedLanguagesAsVector(self.ptr());
            if arr.is_null() {
                return Vec::new();
            }
            let mut out = Vec::new();
            let mut i = 0;
            loop {
                let s = *arr.add(i);
                if s.is_null() {
                    break;
                }
                out.push(CStr::from_ptr(s).to_string_lossy().into_owned());
                i += 1;
            }
            ffi::TessDeleteTextArray(arr);
            out
        }
    }

    fn set_page_seg_mode(&mut self, mode: PageSegMode) {
        self.set_page_seg_mode_raw(mode as c_int);
    }

    fn set_page_seg_mode_raw(&mut self, mode: c_int) {
        // SAFETY: handle is live; `mode` is one of capi.h's TessPageSegMode values.
        unsafe { ffi::TessBaseAPISetPageSegMode(self.ptr(), mode) };
    }
}

impl OcrEngine for TesseractEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn recognize(&mut self, page: &GrayImage, ppi: Option<u32>) -> Result<Recognized, OcrError> {
        // Tesseract refuses (and prints) for images under 3 px a side; such a
        // page has no readable text, which is a result, not an error.
        if page.width() < 3 || page.height() < 3 {
            return Ok(Recognized {
                text: String::new(),
                confidence: 0.0,
            });
        }
        let guard = self.api.set_page(page, ppi)?;
        let api = guard.0.ptr();
        recognize_within(api, self.time_limit, &self.name)?;
        // SAFETY: handle is live with an image set and recognition done, so
        // GetUTF8Text only collects the results into a new[]-allocated C
        // string (null on failure).
        let raw = unsafe { ffi::TessBaseAPIGetUTF8Text(api) };
        if raw.is_null() {
            return Err(OcrError::Engine(
                "Tesseract returned no text (recognition failed)".into(),
            ));
        }
        // SAFETY: `raw` is a non-null NUL-terminated string owned by us until
        // TessDeleteText, which is called exactly once right after copying.
        let text = unsafe {
            let text = CStr::from_ptr(raw).to_string_lossy().into_owned();
            ffi::TessDeleteText(raw);
            text
        };
        // SAFETY: handle is live and recognition is done, so this only reads
        // the existing results (0 when there are no words).
        let conf = unsafe { ffi::TessBaseAPIMeanTextConf(api) };
        drop(guard);
        let text = text.trim_end().to_owned();
        // Tesseract reports a high mean confidence (0.95) for some shadowed handwritten pages
        // it reads as nothing at all (OCR.md, "Page enhancement"); no text is no reading, and
        // saying so here lets `auto`'s confidence rule send such pages to PP-OCR.
        let confidence = if text.trim().is_empty() {
            0.0
        } else {
            conf.clamp(0, 100) as f32 / 100.0
        };
        Ok(Recognized { text, confidence })
    }

    fn detect_orientation(
        &mut self,
        page: &GrayImage,
        ppi: Option<u32>,
    ) -> Result<Option<Orientation>, OcrError> {
        let Some(osd) = self.osd.as_mut() else {
            return Ok(None);
        };
        if page.width() < 3 || page.height() < 3 {
            return Ok(None);
        }
        let guard = osd.set_page(page, ppi)?;
        let mut degrees: c_int = 0;
        let mut conf: c_float = 0.0;
        let mut script_conf: c_float = 0.0;
        // SAFETY: handle is live with an image set; out-pointers point to
        // locals; a null script_name is explicitly allowed (checked by
        // Tesseract) and avoids the ownership question of the returned name.
        let ok = unsafe {
            ffi::TessBaseAPIDetectOrientationScript(
                guard.0.ptr(),
                &mut degrees,
                &mut conf,
                std::ptr::null_mut::<*const c_char>(),
                &mut script_conf,
            )
        };
        drop(guard);
        if ok == 0 {
            return Ok(None); // too little text to decide
        }
        let degrees = match degrees.rem_euclid(360) {
            d @ (0 | 90 | 180 | 270) => d as u16,
            _ => return Ok(None),
        };
        Ok(Some(Orientation {
            degrees,
            confidence: conf,
        }))
    }
}

/// Runs recognition on the page set on `api`, stopping at `limit`.
fn recognize_within(
    api: *mut ffi::TessBaseAPI,
    limit: Option<Duration>,
    engine: &str,
) -> Result<(), OcrError> {
    let monitor = Monitor::create()?;
    if let Some(limit) = limit {
        // At least 1 ms: Tesseract treats 0 as "no deadline".
        let msecs = c_int::try_from(limit.as_millis().max(1)).unwrap_or(c_int::MAX);
        // SAFETY: the monitor is live and owned by us; this only stores an end time.
        unsafe { ffi::TessMonitorSetDeadlineMSecs(monitor.0.as_ptr(), msecs) };
    }
    let started = Instant::now();
    // SAFETY: `api` is a live, initialised handle with an image set (the
    // caller holds its PageGuard); the monitor outlives the call and is only
    // read by Tesseract on this thread.
    let rc = unsafe { ffi::TessBaseAPIRecognize(api, monitor.0.as_ptr()) };
    if rc == 0 {
        return Ok(());
    }
    match limit {
        // Tesseract reports a deadline like any other failure; the clock tells them apart.
        Some(limit) if started.elapsed() >= limit => Err(OcrError::TimedOut {
            engine: engine.to_owned(),
            limit_secs: limit.as_secs_f64(),
        }),
        _ => Err(OcrError::Engine(
            "Tesseract could not recognise the page (layout analysis or recognition failed)".into(),
        )),
    }
}

/// Owns one `ETEXT_DESC*`, deleted on drop.
struct Monitor(NonNull<ffi::EtextDesc>);

impl Monitor {
    fn create() -> Result<Self, OcrError> {
        // SAFETY: TessMonitorCreate has no preconditions and returns a fresh
        // heap object (null only on allocation failure, checked here).
        let raw = unsafe { ffi::TessMonitorCreate() };
        NonNull::new(raw)
            .map(Monitor)
            .ok_or_else(|| OcrError::Engine("TessMonitorCreate returned null".into()))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // SAFETY: we own the pointer, created by TessMonitorCreate and not yet deleted.
        unsafe { ffi::TessMonitorDelete(self.0.as_ptr()) };
    }
}

fn datapath_cstring(datapath: Option<&Path>) -> Result<Option<CString>, OcrError> {
    datapath
        .map(|p| {
            let s = p.to_str().ok_or_else(|| {
                OcrError::EngineInit(format!("tessdata path {} is not UTF-8", p.display()))
            })?;
            cstring(s)
        })
        .transpose()
}

fn cstring(s: &str) -> Result<CString, OcrError> {
    CString::new(s).map_err(|_| OcrError::EngineInit(format!("{s:?} contains a NUL byte")))
}

/// Language codes are file names under tessdata: allow only `[A-Za-z0-9_]`
/// joined by `+`, which also rules out path traversal.
fn validate_languages(languages: &str) -> Result<(), OcrError> {
    let ok = !languages.is_empty()
        && languages
            .split('+')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    if ok {
        Ok(())
    } else {
        Err(OcrError::EngineInit(format!(
            "invalid Tesseract language list {languages:?} (expected e.g. \"eng\" or \"eng+hin\")"
        )))
    }
}

/// Where Tesseract will look for traineddata when not told: the same order
/// as libtesseract (explicit path, `$TESSDATA_PREFIX`, compiled-in default),
/// with Debian's default locations as the last resort.
fn resolve_datapath(datapath: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = datapath {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("TESSDATA_PREFIX") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/share/tesseract-ocr/5/tessdata",
        "/usr/share/tesseract-ocr/4.00/tessdata",
        "/usr/share/tessdata",
        "/usr/local/share/tessdata",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_dir())
}

fn missing_data_message(languages: &str, datapath: Option<&Path>) -> String {
    let dir = resolve_datapath(datapath);
    let where_ = dir.as_ref().map_or_else(
        || "Tesseract's default tessdata directory".to_owned(),
        |d| d.display().to_string(),
    );
    let missing: Vec<&str> = languages
        .split('+')
        .filter(|l| {
            dir.as_ref()
                .is_none_or(|d| !d.join(format!("{l}.traineddata")).is_file())
        })
        .collect();
    if missing.is_empty() {
        return format!(
            "Tesseract failed to initialise language(s) {languages:?} from {where_} \
             (the traineddata files exist but could not be loaded; corrupt or wrong version?)"
        );
    }
    let files: Vec<String> = missing.iter().map(|l| format!("{l}.traineddata")).collect();
    let packages: Vec<String> = missing.iter().map(|l| debian_package(l)).collect();
    format!(
        "Tesseract could not load {} from {where_}; install Debian package(s): apt-get install {}",
        files.join(", "),
        packages.join(" ")
    )
}

/// Debian names language packs `tesseract-ocr-<code>` with `_` → `-`
/// (`chi_sim` → `tesseract-ocr-chi-sim`).
fn debian_package(lang: &str) -> String {
    format!(
        "tesseract-ocr-{}",
        lang.to_ascii_lowercase().replace('_', "-")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_validation() {
        assert!(validate_languages("eng").is_ok());
        assert!(validate_languages("eng+hin").is_ok());
        assert!(validate_languages("chi_sim").is_ok());
        for bad in ["", "+", "eng+", "../etc/passwd", "eng hin", "eng\0"] {
            assert!(validate_languages(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_language_names_file_and_package() {
        let err = match TesseractEngine::new("eng+zzz_qq", None) {
            Ok(_) => panic!("zzz_qq should not exist"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("zzz_qq.traineddata"), "{err}");
        assert!(err.contains("tesseract-ocr-zzz-qq"), "{err}");
        assert!(!err.contains("eng.traineddata"), "{err}");
    }

    #[test]
    fn missing_osd_data_is_a_clear_error_and_engine_still_works() {
        let empty = std::env::temp_dir().join(format!("ocr-no-tessdata-{}", std::process::id()));
        std::fs::create_dir_all(&empty).expect("temp dir");
        let mut engine = TesseractEngine::new("eng", None).expect("eng installed");
        let err = engine
            .enable_orientation_detection(Some(&empty))
            .expect_err("no osd.traineddata there")
            .to_string();
        assert!(
            err.contains("osd.traineddata") && err.contains("tesseract-ocr-osd"),
            "{err}"
        );
        assert!(!engine.detects_orientation());
        let page = GrayImage::from_pixel(100, 50, image::Luma([255]));
        assert!(engine
            .detect_orientation(&page, None)
            .expect("no-op")
            .is_none());
        let _ = std::fs::remove_dir(&empty);
    }

    #[test]
    fn blank_and_tiny_pages_give_empty_text() {
        let mut engine = TesseractEngine::new("eng", None).expect("eng installed");
        let blank = GrayImage::from_pixel(600, 400, image::Luma([255]));
        let r = engine.recognize(&blank, Some(300)).expect("blank page");
        assert_eq!(r.text, "");
        assert_eq!(r.confidence, 0.0);
        let tiny = GrayImage::from_pixel(2, 2, image::Luma([0]));
        assert_eq!(engine.recognize(&tiny, None).expect("tiny").text, "");
    }

    #[test]
    fn reports_version() {
        assert!(version().starts_with(['4', '5']), "{}", version());
    }
}

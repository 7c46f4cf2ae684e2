//! The reproducible fitting run of the shipped calibration (an ignored test, because it needs the
//! model files and the dev data and takes a few minutes).
//!
//! Reads every `*.jsonl` of `$EXAMINER_ASAG_DIR` (default `/work/shared/data/asag-dev`) at run
//! time, measures the local grader's features, prints leave-one-question-out figures per data
//! set, fits the shipped profiles on all answers and writes them to `$CALIBRATION_OUT` (default
//! `calibration/local-grader-v2.json` under the crate root), once for questions with their text
//! and once without it. Nothing of the data is compiled in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;

use super::calibrate::{cross_validate, fit, FitOptions, Sample};
use super::eval::{eval_step, AsagItem, Report};
use crate::embed::{default_models_dir, EmbedPool, Embedder};
use crate::grade::clamp_and_round;
use crate::grade::local::calibration::{Calibration, Link, Profile, QuestionText};
use crate::grade::local::{is_non_answer, Features, LocalGrader, Pooling};

/// The shipped calibration: its version (recorded with every mark it gives) and its file.
const CALIBRATION_VERSION: &str = "local-grader-v2";
const CALIBRATION_FILE: &str = "calibration/local-grader-v2.json";

fn crate_path(p: PathBuf) -> PathBuf {
    if p.is_relative() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
    } else {
        p
    }
}

/// The embedding workers the fitting runs grade with: the model from the models directory,
/// two single-threaded workers.
fn dev_embed_pool() -> Arc<EmbedPool> {
    let models = crate_path(default_models_dir());
    let embedder = Arc::new(Embedder::load(&models).expect("model files (scripts/fetch-model.sh)"));
    Arc::new(EmbedPool::new(embedder, 2, 1, 8).unwrap())
}

/// All dev sets, in a fixed order, with their items.
pub(crate) fn load_dev_sets() -> Vec<(String, Vec<AsagItem>)> {
    let dir =
        std::env::var("EXAMINER_ASAG_DIR").unwrap_or_else(|_| "/work/shared/data/asag-dev".into());
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("dev data folder {dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .filter(|p| {
            // DEV_SETS=mohler,saf_en restricts the run (for quick experiments).
            let only = std::env::var("DEV_SETS").unwrap_or_default();
            let stem = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            only.is_empty() || only.split(',').any(|s| s == stem)
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            (name, super::eval::load_jsonl(&p).unwrap())
        })
        .collect()
}

pub(crate) async fn measure(grader: &LocalGrader, items: &[AsagItem]) -> Vec<Features> {
    futures::stream::iter(
        items
            .iter()
            .map(|it| async move { grader.features(&it.task()).await.expect("features") }),
    )
    .buffered(8)
    .collect()
    .await
}

/// The features of the shipped profiles (chosen by leave-one-question-out CV on the dev data;
/// see GRADING.md for the ablation).
pub(crate) const SHIPPED_FEATURES: [&str; 9] = [
    "tok_recall",
    "tok_precision",
    "align_recall",
    "align_min",
    "kp_tok_min",
    "sim_whole",
    "sim_rel",
    "lex_recall",
    "len_ratio",
];

pub(crate) fn options(features: &[&str]) -> FitOptions {
    FitOptions {
        features: features.iter().map(|s| s.to_string()).collect(),
        link: Link::Logistic,
        ridge: 0.001,
    }
}

/// The shipped profiles: (name, mark range, which dev answers train it).
/// "short" (1-3 marks): every dev set whose questions are worth at most 3 marks, each set
/// weighted equally. "long" (4+ marks): Mohler (0-5) only; os_xie2024 (16 marks, one question)
/// is kept out of fitting as an untouched check of the long profile.
type ProfileSpec = (&'static str, f64, f64, fn(&AsagItem) -> bool);

fn profile_specs() -> Vec<ProfileSpec> {
    vec![
        ("short", 0.0, 3.0, |i: &AsagItem| i.max_marks <= 3.0),
        ("long", 3.0 + 1e-9, f64::MAX, |i: &AsagItem| {
            i.max_marks > 3.0 && i.dataset == "mohler"
        }),
    ]
}

/// Off-topic answers added per question (see `fit_shipped_calibration`).
const NEGATIVES_PER_QUESTION: usize = 8;

/// Build weighted samples for a profile: each data set gets the same total weight.
fn samples_for(all: &[(String, AsagItem, Features)], member: fn(&AsagItem) -> bool) -> Vec<Sample> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (set, item, _) in all {
        if member(item) && !item.question_id.contains('|') {
            *counts.entry(set.as_str()).or_default() += 1;
        }
    }
    let sets = counts.len().max(1) as f64;
    let total: usize = counts.values().sum();
    all.iter()
        // Non-answers never reach the calibration in LocalGrader::grade, so they do not train it.
        .filter(|(_, item, _)| member(item) && !is_non_answer(&item.student_answer))
        .filter_map(|(set, item, f)| {
            let w = total as f64 / (sets * counts.get(set.as_str()).copied().unwrap_or(1) as f64);
            let mut s = Sample::from_item(item, f.clone(), w)?;
            // Negatives carry both question ids (see fit_shipped_calibration).
            s.off_topic = item.question_id.contains('|');
            Some(s)
        })
        .collect()
}

/// Cross-validated report of one data set under a profile spec: leave-one-question-out when the
/// set is in the profile's training pool, otherwise scored by the model fitted on the pool.
fn cv_report(
    all: &[(String, AsagItem, Features)],
    train: &[(String, AsagItem, Features)],
    set: &str,
    features: &[&str],
) -> (Report, String) {
    let items: Vec<&(String, AsagItem, Features)> =
        all.iter().filter(|(s, _, _)| s == set).collect();
    let max = items
        .iter()
        .map(|(_, i, _)| i.max_marks)
        .fold(0.0, f64::max);
    let specs = profile_specs();
    let (name, _, _, member) = specs
        .iter()
        .find(|(_, lo, hi, _)| max >= *lo && max <= *hi)
        .copied()
        .unwrap_or(*specs.last().unwrap());
    let pool = samples_for(train, member);
    let score: Vec<Sample> = items
        .iter()
        .map(|(_, i, f)| Sample::from_item(i, f.clone(), 1.0).expect("target"))
        .collect();
    let fractions = cross_validate(&pool, &score, &options(features));
    let predicted: Vec<Option<f64>> = items
        .iter()
        .zip(&fractions)
        .map(|((_, i, _), fr)| {
            // Same rule as LocalGrader::grade: non-answers get 0 without the model.
            let fr = if is_non_answer(&i.student_answer) {
                0.0
            } else {
                *fr
            };
            Some(clamp_and_round(
                fr * i.max_marks,
                i.max_marks,
                eval_step(i.max_marks),
            ))
        })
        .collect();
    let plain: Vec<AsagItem> = items.iter().map(|(_, i, _)| i.clone()).collect();
    let in_pool = items.iter().any(|(_, i, _)| member(i));
    let how = if in_pool {
        format!("{name}, leave-one-question-out")
    } else {
        format!("{name}, not in its training pool")
    };
    (Report::from_predictions(&plain, &predicted), how)
}

fn fmt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.3}"))
}

/// The two ways a question reaches the grader, each with profiles of its own: with its text
/// (the dev data as it is) and without it (the contract's `qa_pairs` carry no question text,
/// and a stored paper may have none).
const QUESTION_VIEWS: [QuestionText; 2] = [QuestionText::Given, QuestionText::Missing];

/// The item as the grader sees it in `view`.
fn in_view(item: &AsagItem, view: QuestionText) -> AsagItem {
    let mut item = item.clone();
    if view == QuestionText::Missing {
        item.question.clear();
    }
    item
}

/// Suffix of a profile's name, and key of its cross-validated figures, in `view`.
fn view_name(view: QuestionText) -> &'static str {
    match view {
        QuestionText::Missing => "without-question",
        QuestionText::Given | QuestionText::Any => "with-question",
    }
}

/// What one view's fit produced: its profiles and its leave-one-question-out figures.
struct FittedView {
    profiles: Vec<Profile>,
    cv: serde_json::Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the model and the dev data; writes the calibration file (see GRADING.md)"]
async fn fit_shipped_calibration() {
    let pool = dev_embed_pool();
    let pooling = match std::env::var("LOCAL_POOLING").as_deref() {
        Ok("separate") => Pooling::Separate,
        _ => Pooling::Spans,
    };
    let grader = LocalGrader::new(pool).with_pooling(pooling);
    let sets = load_dev_sets();
    let mut profiles = Vec::new();
    let mut cv = serde_json::Map::new();
    for view in QUESTION_VIEWS {
        println!("\n## Questions graded {}", view_name(view));
        let fitted = fit_view(&grader, &sets, view).await;
        profiles.extend(fitted.profiles);
        cv.insert(view_name(view).to_string(), fitted.cv);
    }
    let calibration = Calibration {
        version: CALIBRATION_VERSION.into(),
        embedding_model: "all-minilm-l6-v2".into(),
        description: "Ridge logistic regression (quasi-binomial, target = human mark / max marks) on standardised \
                      features; profile chosen by the question's total marks and by whether its text is known. \
                      Fitted by `cargo test --release --lib fit_shipped_calibration -- --ignored --nocapture`."
            .into(),
        profiles,
        cv: serde_json::Value::Object(cv),
    };
    let text = serde_json::to_string_pretty(&calibration).unwrap();
    let out = std::env::var("CALIBRATION_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| crate_path(PathBuf::from(CALIBRATION_FILE)));
    if std::env::var("DEV_SETS").is_ok() {
        eprintln!("DEV_SETS is set: not writing {}", out.display());
    } else {
        Calibration::from_json(&text).expect("valid");
        std::fs::write(&out, text + "\n").unwrap();
        eprintln!("wrote {}", out.display());
    }
}

/// Measures every dev answer as the grader sees it in `view`, prints the figures and fits that
/// view's profiles.
async fn fit_view(
    grader: &LocalGrader,
    sets: &[(String, Vec<AsagItem>)],
    view: QuestionText,
) -> FittedView {
    let sets: Vec<(String, Vec<AsagItem>)> = sets
        .iter()
        .map(|(name, items)| {
            (
                name.clone(),
                items.iter().map(|i| in_view(i, view)).collect(),
            )
        })
        .collect();
    let mut all: Vec<(String, AsagItem, Features)> = Vec::new();
    for (name, items) in &sets {
        let t = std::time::Instant::now();
        let feats = measure(grader, items).await;
        eprintln!(
            "{name}: {} answers measured in {:.1}s",
            items.len(),
            t.elapsed().as_secs_f64()
        );
        all.extend(
            items
                .iter()
                .cloned()
                .zip(feats)
                .map(|(i, f)| (name.clone(), i, f)),
        );
    }
    // Off-topic negatives: for each question, a few answers written for *other* questions of the
    // same set, graded against this question's standard answer, with target 0. Real marked data
    // has almost no off-topic answers, so without these a lenient profile (Mohler) extrapolates
    // to ~40% for an unrelated answer.
    let mut negatives: Vec<(String, AsagItem, Features)> = Vec::new();
    for (name, items) in &sets {
        let mut questions: Vec<&str> = items.iter().map(|i| i.question_id.as_str()).collect();
        questions.dedup();
        questions.sort_unstable();
        questions.dedup();
        if questions.len() < 2 {
            continue;
        }
        let mut tasks = Vec::new();
        for (qi, q) in questions.iter().enumerate() {
            let base = items.iter().find(|i| i.question_id == *q).unwrap();
            // Deterministic choice: the k-th answer of each following question, round robin.
            let mut taken = 0;
            let mut k = 0;
            while taken < NEGATIVES_PER_QUESTION && k < 50 {
                let other = questions[(qi + 1 + k % (questions.len() - 1)) % questions.len()];
                let pick = items
                    .iter()
                    .filter(|i| i.question_id == other)
                    .nth(k / (questions.len() - 1));
                k += 1;
                let Some(pick) = pick else { continue };
                let mut neg = base.clone();
                neg.student_answer = pick.student_answer.clone();
                neg.human_marks = vec![0.0];
                neg.gold_mark = Some(0.0);
                // Both questions form the CV group, so a held-out question's answers never train.
                neg.question_id = format!("{}|{}/{}", base.question_id, name, other);
                tasks.push(neg);
                taken += 1;
            }
        }
        let feats = measure(grader, &tasks).await;
        negatives.extend(
            tasks
                .into_iter()
                .zip(feats)
                .map(|(i, f)| (name.clone(), i, f)),
        );
    }
    eprintln!("{} off-topic negatives measured", negatives.len());

    if let Some(dump) = std::env::var("FEATURES_DUMP")
        .ok()
        .map(|path| dump_path(&path, view))
    {
        let mut out = String::new();
        for ((name, item, f), neg) in all
            .iter()
            .map(|x| (x, false))
            .chain(negatives.iter().map(|x| (x, true)))
        {
            let v = serde_json::json!({"set": name, "q": item.question_id, "max": item.max_marks,
                "target": item.target(), "human": item.human_marks, "f": f, "neg": neg,
                "non_answer": is_non_answer(&item.student_answer)});
            out.push_str(&v.to_string());
            out.push('\n');
        }
        std::fs::write(&dump, out).unwrap();
        eprintln!("features written to {dump}");
    }

    let train: Vec<(String, AsagItem, Features)> = all.iter().chain(&negatives).cloned().collect();
    let off_topic = |profile: &str, fs: &[&str]| -> f64 {
        // Mean fraction the profile gives the off-topic negatives of its own sets (in CV).
        let spec = profile_specs()
            .into_iter()
            .find(|p| p.0 == profile)
            .unwrap();
        let pool = samples_for(&train, spec.3);
        let negs: Vec<Sample> = negatives
            .iter()
            .filter(|(_, i, _)| (spec.3)(i))
            .filter_map(|(_, i, f)| Sample::from_item(i, f.clone(), 1.0))
            .map(|mut s| {
                s.group = s.group.split('|').next().unwrap_or("").to_string();
                s
            })
            .collect();
        let fr = cross_validate(&pool, &negs, &options(fs));
        fr.iter().sum::<f64>() / fr.len().max(1) as f64
    };
    println!(
        "off-topic answers (CV): short profile gives {:.1}% of the marks on average, long {:.1}%",
        100.0 * off_topic("short", &SHIPPED_FEATURES),
        100.0 * off_topic("long", &SHIPPED_FEATURES)
    );

    // Honest figures: cross-validated over questions.
    let mut cv = serde_json::Map::new();
    println!("\n| set | n | pearson | spearman | rmse | mae | qwk | exact | within 1 | acc | macro-F1 | human r / rmse / qwk | how |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, _) in &sets {
        let (r, how) = cv_report(&all, &train, name, &SHIPPED_FEATURES);
        let plot_dir = std::env::var("PLOT_DIR")
            .ok()
            .map(|dir| Path::new(&dir).join(view_name(view)));
        let m = &r.metrics;
        let human = r.human.as_ref().map_or("-".into(), |h| {
            format!("{} / {} / {}", fmt(h.pearson), fmt(h.rmse), fmt(h.qwk))
        });
        println!(
            "| {name} (0-{}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {human} | {how} |",
            r.max_marks,
            m.count,
            fmt(m.pearson),
            fmt(m.spearman),
            fmt(m.rmse),
            fmt(m.mae),
            fmt(m.qwk),
            fmt(m.exact),
            fmt(m.within_one),
            fmt(m.accuracy),
            fmt(m.macro_f1)
        );
        if let Some(dir) = plot_dir {
            let (p, h): (Vec<f64>, Vec<f64>) = r.pairs.iter().copied().unzip();
            std::fs::create_dir_all(&dir).unwrap();
            super::plot::write_plot(dir.join(format!("{name}.svg")), &p, &h, r.max_marks).unwrap();
        }
        let mut v = serde_json::to_value(&r).unwrap();
        v["protocol"] = serde_json::json!(how);
        cv.insert(name.clone(), v);
    }

    // What each feature group adds (Mohler and the short-profile sets, leave-one-question-out),
    // shown for the questions with their text, where GRADING.md's table comes from.
    let ablations: [(&str, &[&str]); 6] = [
        ("whole-answer similarity only", &["sim_whole"]),
        (
            "+ sentence alignment",
            &["sim_whole", "align_recall", "align_min"],
        ),
        (
            "+ token alignment",
            &[
                "sim_whole",
                "align_recall",
                "align_min",
                "tok_recall",
                "tok_precision",
                "kp_tok_min",
            ],
        ),
        (
            "+ question demotion (sim_rel)",
            &[
                "sim_whole",
                "align_recall",
                "align_min",
                "tok_recall",
                "tok_precision",
                "kp_tok_min",
                "sim_rel",
            ],
        ),
        ("lexical only", &["lex_recall", "len_ratio"]),
        ("shipped", &SHIPPED_FEATURES),
    ];
    let ablations: &[(&str, &[&str])] = if view == QuestionText::Given {
        &ablations
    } else {
        &[]
    };
    if !ablations.is_empty() {
        println!("\n| features | mohler r / rmse | scientsbank r / acc | beetle r / acc | saf_en r | asap r / qwk |");
        println!("|---|---|---|---|---|---|");
    }
    for &(label, fs) in ablations {
        let mut cells = Vec::new();
        for set in [
            "mohler",
            "semeval2013_scientsbank",
            "semeval2013_beetle",
            "saf_en",
            "asap_sas",
        ] {
            if !all.iter().any(|(s, _, _)| s == set) {
                cells.push("-".to_string());
                continue;
            }
            let m = cv_report(&all, &train, set, fs).0.metrics;
            cells.push(match set {
                "mohler" => format!("{} / {}", fmt(m.pearson), fmt(m.rmse)),
                "saf_en" => fmt(m.pearson),
                "asap_sas" => format!("{} / {}", fmt(m.pearson), fmt(m.qwk)),
                _ => format!("{} / {}", fmt(m.pearson), fmt(m.accuracy)),
            });
        }
        println!("| {label} | {} |", cells.join(" | "));
    }

    // The shipped profiles, fitted on every answer of their pools.
    let mut profiles: Vec<Profile> = Vec::new();
    for (name, lo, hi, member) in profile_specs() {
        let samples = samples_for(&train, member);
        if samples.iter().all(|s| s.off_topic) {
            // Only in a quick run (DEV_SETS) that leaves out every set of this profile.
            eprintln!("no answers for the {name} profile in this run: not fitted");
            continue;
        }
        let refs: Vec<&Sample> = samples.iter().collect();
        let mut p = fit(&refs, &options(&SHIPPED_FEATURES));
        p.name = format!("{name}-{}", view_name(view));
        p.question_text = view;
        p.min_marks = lo;
        p.max_marks = hi;
        p.fitted_max_marks = all
            .iter()
            .filter(|(_, i, _)| member(i))
            .map(|(_, i, _)| i.max_marks)
            .reduce(f64::max);
        let mut used: Vec<&str> = all
            .iter()
            .filter(|(_, i, _)| member(i))
            .map(|(s, _, _)| s.as_str())
            .collect();
        used.dedup();
        let negs = negatives.iter().filter(|(_, i, _)| member(i)).count();
        p.fitted_on = format!(
            "{} answers of asag-dev ({}) plus {negs} off-topic answers from other questions marked 0",
            samples.len() - negs,
            used.join(", ")
        );
        profiles.push(p);
    }
    FittedView {
        profiles,
        cv: serde_json::Value::Object(cv),
    }
}

/// Where `view`'s features go: the given path for questions with their text, the same with
/// `-without-question` before the extension for the others.
fn dump_path(path: &str, view: QuestionText) -> String {
    if view != QuestionText::Missing {
        return path.to_string();
    }
    let path = Path::new(path);
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{}.{}", view_name(view), ext.to_string_lossy()),
        None => format!("{stem}-{}", view_name(view)),
    };
    path.with_file_name(name).to_string_lossy().into_owned()
}

/// Dumps, for every dev answer, how it matches each key point of its standard answer, beside
/// its human mark: the data behind the feedback's "covers" / "missing" claims (GRADING.md,
/// "Feedback"). Writes JSON lines to `KEY_POINTS_DUMP` (default `key-points.jsonl` in the
/// system's temporary directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the model and the dev data"]
async fn dump_key_point_matches() {
    let grader = LocalGrader::new(dev_embed_pool());
    let path = std::env::var("KEY_POINTS_DUMP")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("key-points.jsonl"));
    let mut out = String::new();
    for (name, items) in load_dev_sets() {
        let matches: Vec<_> = futures::stream::iter(items.iter().map(|it| {
            let grader = &grader;
            async move { grader.key_point_matches(&it.task()).await.expect("matches") }
        }))
        .buffered(8)
        .collect()
        .await;
        for (item, matches) in items.iter().zip(matches) {
            let points: Vec<_> = matches
                .iter()
                .map(|m| serde_json::json!([m.best_sim, m.word_share, m.token_recall, m.covered]))
                .collect();
            out.push_str(
                &serde_json::json!({
                    "set": name,
                    "question": item.question_id,
                    "max": item.max_marks,
                    "human": item.target(),
                    "non_answer": is_non_answer(&item.student_answer),
                    "points": points,
                })
                .to_string(),
            );
            out.push('\n');
        }
        eprintln!("{name}: {} answers", items.len());
    }
    std::fs::write(&path, out).unwrap();
    eprintln!("wrote {}", path.display());
}

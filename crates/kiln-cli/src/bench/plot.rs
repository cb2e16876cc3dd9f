//! The benchmarks' SVG plots (plotters, in the style of `kiln_plot`).

use kiln_plot::plotters::prelude::*;
use kiln_plot::{chart, legend, line_with_dots, two_panels, Axes};
use serde_json::Value;
use std::path::Path;

/// Compile speedup against threads (with the ideal line and the machine's ceiling) and the
/// stage times of each configuration.
pub fn compile(doc: &Value, path: &Path) -> anyhow::Result<()> {
    let configs = doc["configs"].as_array().cloned().unwrap_or_default();
    let pts: Vec<(f64, f64, f64)> = configs
        .iter()
        .map(|c| {
            (
                c["threads"].as_f64().unwrap_or(1.0),
                c["speedup"].as_f64().unwrap_or(0.0),
                c["ceiling"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    // The modelled speedups (LPT over measured unit times), drawn dashed and labelled a model.
    let model: Vec<(f64, f64)> = doc["modelled"]["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r["threads"].as_f64().unwrap_or(1.0),
                        r["speedup"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let max_t = pts
        .iter()
        .map(|p| p.0)
        .chain(model.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let mut ch = ChartBuilder::on(&left)
        .caption(
            format!(
                "{}: compile speedup vs threads",
                doc["model"].as_str().unwrap_or("")
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..max_t + 1.0, 0.0..max_t + 1.0)?;
    ch.configure_mesh()
        .x_desc("threads")
        .y_desc("speedup")
        .draw()?;
    ch.draw_series(LineSeries::new(
        vec![(1.0, 1.0), (max_t, max_t)],
        BLACK.mix(0.4),
    ))?
    .label("ideal")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK.mix(0.4)));
    ch.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.2)), GREEN))?
        .label("ceiling (independent copies)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], GREEN));
    ch.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), BLUE))?
        .label("kiln")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
    ch.draw_series(
        pts.iter()
            .map(|p| Circle::new((p.0, p.1), 4, BLUE.filled())),
    )?;
    if !model.is_empty() {
        ch.draw_series(DashedLineSeries::new(
            model.iter().copied(),
            6,
            4,
            RED.stroke_width(2),
        ))?
        .label("model: LPT over measured unit times (not measured)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
    }
    ch.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .draw()?;

    let stage_names: Vec<String> = configs
        .first()
        .and_then(|c| c["stages"].as_array())
        .map(|s| {
            s.iter()
                .filter_map(|x| x["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let max_ms = configs
        .iter()
        .map(|c| c["median_ms"].as_f64().unwrap_or(0.0))
        .fold(1.0, f64::max);
    let mut ch = ChartBuilder::on(&right)
        .caption("stage times (median, ms)", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..configs.len() as f64, 0.0..max_ms * 1.1)?;
    ch.configure_mesh()
        .x_desc("configuration (threads in the order measured)")
        .y_desc("ms")
        .draw()?;
    for (si, name) in stage_names.iter().enumerate() {
        let color = Palette99::pick(si);
        let bars: Vec<Rectangle<(f64, f64)>> = configs
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                let st = c["stages"].as_array().cloned().unwrap_or_default();
                let below: f64 = st.iter().take(si).filter_map(|x| x["ms"].as_f64()).sum();
                let this = st.get(si).and_then(|x| x["ms"].as_f64()).unwrap_or(0.0);
                Rectangle::new(
                    [(ci as f64 + 0.15, below), (ci as f64 + 0.85, below + this)],
                    color.filled(),
                )
            })
            .collect();
        ch.draw_series(bars)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    ch.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The decode benchmark's bars, from its JSON document: prefill against the FMA peak (0 where
/// the peak is unknown) and decode against the memory-bandwidth bound, both in percent.
pub fn decode(doc: &Value, path: &Path) -> anyhow::Result<()> {
    let num = |key: &str| doc[key].as_f64().unwrap_or(0.0);
    let (prefill_gflops, decode) = (num("prefill_gflops"), num("decode_tokens_per_s"));
    let vals = [
        (
            format!("prefill {prefill_gflops:.0} GFLOP/s: % of FMA peak"),
            num("prefill_pct_of_peak"),
        ),
        (
            format!("decode {decode:.1} tokens/s: % of bandwidth bound"),
            num("decode_pct_of_bound"),
        ),
    ];
    let root = SVGBackend::new(path, (600, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut ch = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} on the machine's limits ({}, {} threads)",
                doc["model"].as_str().unwrap_or(""),
                doc["backend"].as_str().unwrap_or(""),
                doc["threads"]
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..2.0, 0.0..110.0)?;
    ch.configure_mesh()
        .x_labels(0)
        .y_desc("% of the limit")
        .draw()?;
    for (i, (name, v)) in vals.iter().enumerate() {
        ch.draw_series([Rectangle::new(
            [(i as f64 + 0.2, 0.0), (i as f64 + 0.8, *v)],
            Palette99::pick(i).filled(),
        )])?
        .label(format!("{name}: {v:.0}%"))
        .legend(move |(x, y)| {
            Rectangle::new([(x, y - 5), (x + 10, y + 5)], Palette99::pick(i).filled())
        });
    }
    ch.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// The serve benchmark's charts, from its JSON document: aggregate tokens/s against the number
/// of concurrent streams (with the line of linear scaling from the first row), and the latency
/// percentiles.
pub fn serve(doc: &Value, path: &Path) -> anyhow::Result<()> {
    let rows = doc["rows"].as_array().cloned().unwrap_or_default();
    let get = |r: &Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    let max_n = rows.iter().map(|r| get(r, "streams")).fold(1.0, f64::max);
    let (root, left, right) = two_panels(path)?;

    let base = rows.first().map_or(0.0, |r| {
        get(r, "aggregate_tokens_per_s") / get(r, "streams").max(1.0)
    });
    let max_tps = rows
        .iter()
        .map(|r| get(r, "aggregate_tokens_per_s"))
        .fold(base * max_n, f64::max)
        .max(1e-9);
    let caption = format!(
        "{}: aggregate tokens/s vs streams",
        doc["model"].as_str().unwrap_or("")
    );
    let mut ch = chart(
        &left,
        Axes {
            caption: &caption,
            font: 18,
            x: 0.0..max_n + 1.0,
            y: 0.0..max_tps * 1.1,
            x_desc: "concurrent streams",
            y_desc: "tokens/s",
            y_label_width: 50,
        },
    )?;
    ch.draw_series(LineSeries::new(
        vec![(1.0, base), (max_n, base * max_n)],
        BLACK.mix(0.4),
    ))?
    .label("linear in streams (from the first row)")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK.mix(0.4)));
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (get(r, "streams"), get(r, "aggregate_tokens_per_s")))
        .collect();
    line_with_dots(&mut ch, &pts, BLUE, "kiln serve")?;
    legend(&mut ch, SeriesLabelPosition::UpperLeft)?;

    let keys = [
        ("ttft_ms_p50", "time to first token p50"),
        ("ttft_ms_p99", "time to first token p99"),
        ("itl_ms_p50", "inter-token latency p50"),
        ("itl_ms_p99", "inter-token latency p99"),
    ];
    let max_ms = rows
        .iter()
        .flat_map(|r| keys.iter().map(move |(k, _)| get(r, k)))
        .fold(1.0, f64::max);
    let mut ch = chart(
        &right,
        Axes {
            caption: "latency (ms)",
            font: 18,
            x: 0.0..max_n + 1.0,
            y: 0.0..max_ms * 1.1,
            x_desc: "concurrent streams",
            y_desc: "ms",
            y_label_width: 50,
        },
    )?;
    for (i, (k, label)) in keys.iter().enumerate() {
        let color = Palette99::pick(i);
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (get(r, "streams"), get(r, k)))
            .collect();
        ch.draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color.to_rgba()));
    }
    legend(&mut ch, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

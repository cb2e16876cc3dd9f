//! The benchmarks' charts (`kiln bench`, the luminal bridge's `encoder_compile` bench): SVG
//! through plotters, in one style — two panels side by side, captioned charts with named axes,
//! lines with their points marked, a boxed legend. A chart that needs more draws on the
//! [`Chart`] these return with plotters itself.

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;

pub use plotters;

/// What drawing an SVG chart fails with (the file cannot be written).
pub type Error = DrawingAreaErrorKind<std::io::Error>;
/// A panel of an SVG file.
pub type Area<'p> = DrawingArea<SVGBackend<'p>, Shift>;
/// A chart with f64 axes on a panel.
pub type Chart<'a, 'p> =
    ChartContext<'a, SVGBackend<'p>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// An 1100 x 450 SVG at `path`, white: the whole drawing (present it when done), and its left
/// and right panels.
pub fn two_panels(path: &Path) -> Result<(Area<'_>, Area<'_>, Area<'_>), Error> {
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    Ok((root, left, right))
}

/// What a chart shows: its caption (at `font` points), its x and y ranges and their names,
/// and the width kept for the y labels.
pub struct Axes<'s> {
    pub caption: &'s str,
    pub font: u32,
    pub x: Range<f64>,
    pub y: Range<f64>,
    pub x_desc: &'s str,
    pub y_desc: &'s str,
    pub y_label_width: u32,
}

/// A chart on `area` with its mesh drawn.
pub fn chart<'a, 'p>(area: &'a Area<'p>, axes: Axes<'_>) -> Result<Chart<'a, 'p>, Error> {
    let mut ch = ChartBuilder::on(area)
        .caption(axes.caption, ("sans-serif", axes.font))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(axes.y_label_width)
        .build_cartesian_2d(axes.x, axes.y)?;
    ch.configure_mesh()
        .x_desc(axes.x_desc)
        .y_desc(axes.y_desc)
        .draw()?;
    Ok(ch)
}

/// A line through `pts` with a dot at each point, named `label` in the legend.
pub fn line_with_dots(
    ch: &mut Chart<'_, '_>,
    pts: &[(f64, f64)],
    color: RGBColor,
    label: &str,
) -> Result<(), Error> {
    ch.draw_series(LineSeries::new(pts.iter().copied(), color))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
    ch.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
    Ok(())
}

/// The legend of the chart's labelled series, boxed, in `corner`.
pub fn legend<'a, 'p: 'a>(
    ch: &mut Chart<'a, 'p>,
    corner: SeriesLabelPosition,
) -> Result<(), Error> {
    ch.configure_series_labels()
        .position(corner)
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_panel_chart_is_written_as_svg() {
        let dir = std::env::temp_dir().join(format!("kiln-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.svg");
        {
            let (root, left, _right) = two_panels(&path).unwrap();
            let mut ch = chart(
                &left,
                Axes {
                    caption: "speedup",
                    font: 18,
                    x: 0.0..4.0,
                    y: 0.0..4.0,
                    x_desc: "threads",
                    y_desc: "speedup",
                    y_label_width: 40,
                },
            )
            .unwrap();
            line_with_dots(&mut ch, &[(1.0, 1.0), (2.0, 1.9)], BLUE, "kiln").unwrap();
            legend(&mut ch, SeriesLabelPosition::UpperLeft).unwrap();
            root.present().unwrap();
        }
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("speedup") && svg.contains("kiln"));
    }
}

//! The page's charts, drawn with plotters as inline SVG (text stays SVG
//! text: no font file is read, and the browser's sans-serif draws it).

use plotters::prelude::*;

/// One line (or row of points) of a chart.
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) points: Vec<(f64, f64)>,
    pub(crate) color: RGBColor,
    /// Points (evaluations: few and far between) rather than a line.
    pub(crate) dots: bool,
}

/// The colours of the page's series.
pub(crate) const BLUE_LINE: RGBColor = RGBColor(31, 119, 180);
pub(crate) const ORANGE_DOTS: RGBColor = RGBColor(255, 127, 14);
pub(crate) const GREEN_LINE: RGBColor = RGBColor(44, 160, 44);

pub(crate) const WIDTH: u32 = 560;
pub(crate) const HEIGHT: u32 = 300;

/// A chart of `series` as an `<svg>` element; `None` when no series has a
/// finite point (the page says so instead).
pub(crate) fn line_chart(x_label: &str, y_label: &str, series: &[Series<'_>]) -> Option<String> {
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied().filter(finite)).collect();
    if all.is_empty() {
        return None;
    }
    let (x0, x1) = padded(all.iter().map(|p| p.0), false);
    let (y0, y1) = padded(all.iter().map(|p| p.1), true);
    let mut svg = String::new();
    let drawn = draw(&mut svg, x_label, y_label, series, (x0, x1), (y0, y1));
    match drawn {
        Ok(()) => Some(svg),
        Err(e) => {
            tracing::warn!("a chart of the report could not be drawn: {e}");
            None
        }
    }
}

fn draw(
    svg: &mut String,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    x: (f64, f64),
    y: (f64, f64),
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    let finite = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    for s in series {
        let points: Vec<(f64, f64)> = s.points.iter().copied().filter(finite).collect();
        if points.is_empty() {
            continue;
        }
        let color = s.color;
        let drawn = if s.dots || points.len() == 1 {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?
        } else {
            chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?
        };
        drawn.label(s.name).legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 16, y + 4)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The range of `values`, widened a little (and around a single value);
/// `from_zero` starts it at 0 for non-negative values near it.
fn padded(values: impl Iterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    let lo = if from_zero && lo >= 0.0 && lo < (hi - lo) { 0.0 } else { lo - pad };
    (lo, hi + pad)
}

/// An axis label: few digits, scientific for the very small or large.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_string()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Seconds in the unit that suits a span of `span` seconds, and its name.
pub(crate) fn time_unit(span: f64) -> (f64, &'static str) {
    if span <= 180.0 {
        (1.0, "seconds")
    } else if span <= 3.0 * 3600.0 {
        (60.0, "minutes")
    } else {
        (3600.0, "hours")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_its_line_and_nothing_without_points() {
        let s = Series {
            name: "loss",
            points: vec![(1.0, 2.0), (2.0, 1.5), (3.0, f64::NAN)],
            color: BLUE_LINE,
            dots: false,
        };
        let svg = line_chart("step", "loss", &[s]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
        let empty = Series { name: "loss", points: vec![(1.0, f64::NAN)], color: BLUE_LINE, dots: false };
        assert!(line_chart("step", "loss", &[empty]).is_none());
    }

    #[test]
    fn ranges_and_ticks() {
        assert_eq!(padded([2.0].into_iter(), true), (1.8, 2.2));
        assert_eq!(padded([0.0].into_iter(), false), (-1.0, 1.0));
        assert_eq!(padded([0.5, 10.5].into_iter(), true).0, 0.0);
        assert_eq!(tick(0.00005), "5.0e-5");
        assert_eq!(tick(250.0), "250");
        assert_eq!(tick(0.25), "0.2500");
        assert_eq!(time_unit(60.0).1, "seconds");
        assert_eq!(time_unit(600.0).1, "minutes");
    }
}

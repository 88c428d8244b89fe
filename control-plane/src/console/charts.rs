//! Charts drawn on the server as SVG (no chart library, no script): a
//! vertical bar chart for series over days and a horizontal one for
//! comparisons across agents or edges. Labels are escaped by maud.

use maud::{html, Markup};

const WIDTH: f64 = 520.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 28.0;

/// Bars over ordered categories (days), with the value printed on top.
pub fn columns(points: &[(String, f64)], format: fn(f64) -> String) -> Markup {
    let max = points.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    let max = if max > 0.0 { max } else { 1.0 };
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - BOTTOM - 16.0;
    let slot = plot_w / points.len().max(1) as f64;
    let bar = (slot * 0.7).min(48.0);
    html! {
        svg xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } width="100%" role="img" {
            line x1=(LEFT) y1=(16.0) x2=(LEFT) y2=(16.0 + plot_h) stroke="#b8c1ca" {}
            line x1=(LEFT) y1=(16.0 + plot_h) x2=(WIDTH - 8.0) y2=(16.0 + plot_h) stroke="#b8c1ca" {}
            text x=(LEFT - 4.0) y=(20.0) text-anchor="end" { (format(max)) }
            text x=(LEFT - 4.0) y=(16.0 + plot_h) text-anchor="end" { "0" }
            @if points.is_empty() {
                text x=(LEFT + plot_w / 2.0) y=(16.0 + plot_h / 2.0) text-anchor="middle" { "no data yet" }
            }
            @for (i, (label, value)) in points.iter().enumerate() {
                @let h = plot_h * value / max;
                @let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
                rect x=(x) y=(16.0 + plot_h - h) width=(bar) height=(h) fill="#1f5fbf" {
                    title { (label) ": " (format(*value)) }
                }
                text x=(x + bar / 2.0) y=(12.0 + plot_h - h) text-anchor="middle" { (format(*value)) }
                text x=(x + bar / 2.0) y=(HEIGHT - 10.0) text-anchor="middle" { (short_label(label)) }
            }
        }
    }
}

/// Horizontal bars, one per named item.
pub fn bars(points: &[(String, f64)], format: fn(f64) -> String) -> Markup {
    let max = points.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    let max = if max > 0.0 { max } else { 1.0 };
    let row = 24.0;
    let height = (points.len().max(1) as f64) * row + 8.0;
    let label_w = 130.0;
    let plot_w = WIDTH - label_w - 70.0;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (height) } width="100%" role="img" {
            @if points.is_empty() {
                text x=(WIDTH / 2.0) y=(18.0) text-anchor="middle" { "no data yet" }
            }
            @for (i, (label, value)) in points.iter().enumerate() {
                @let y = 4.0 + row * i as f64;
                @let w = (plot_w * value / max).max(1.0);
                text x=(label_w - 6.0) y=(y + 15.0) text-anchor="end" { (short_label(label)) }
                rect x=(label_w) y=(y + 3.0) width=(w) height=(row - 8.0) fill="#1f5fbf" {
                    title { (label) ": " (format(*value)) }
                }
                text x=(label_w + w + 5.0) y=(y + 15.0) { (format(*value)) }
            }
        }
    }
}

fn short_label(label: &str) -> String {
    if label.chars().count() > 18 {
        let head: String = label.chars().take(17).collect();
        format!("{head}…")
    } else {
        label.to_owned()
    }
}

/// `$0.0123`.
pub fn dollars(value: f64) -> String {
    format!("${value:.4}")
}

/// `42%`.
pub fn percent(value: f64) -> String {
    format!("{:.0}%", value * 100.0)
}

/// `1.2 s` or `340 ms`.
pub fn millis(value: f64) -> String {
    if value >= 1000.0 {
        format!("{:.1} s", value / 1000.0)
    } else {
        format!("{value:.0} ms")
    }
}

/// A count.
pub fn count(value: f64) -> String {
    format!("{value:.0}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_escape_labels_and_scale_to_the_largest_value() {
        let svg = bars(&[("<script>".into(), 2.0), ("b".into(), 1.0)], count).into_string();
        assert!(svg.contains("&lt;script&gt;") && !svg.contains("<script>"));
        assert!(svg.contains(r#"width="320""#), "the largest bar spans the plot: {svg}");
        assert!(svg.contains(r#"width="160""#), "half the value, half the width: {svg}");
        let empty = columns(&[], dollars).into_string();
        assert!(empty.contains("no data yet"));
    }
}

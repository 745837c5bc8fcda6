//! Bounding boxes from a CSV, as `build_imagenet_data.py --bounding_box_file`
//! reads them: lines `file,xmin,ymin,xmax,ymax`, where `file` is an image's
//! base name and the coordinates are relative to the image (0..1). An image
//! may have several lines; an image with none gets no box features.

use inception_core::example::BoundingBox;
use std::collections::HashMap;

use crate::IngestError;

/// Boxes by image base name.
pub type Boxes = HashMap<String, Vec<BoundingBox>>;

/// Reads the CSV at `path`; an empty path means no boxes. A header line
/// (`filename,xmin,…`) is allowed; any other bad line is an error naming it.
pub fn load(path: &str) -> Result<Boxes, IngestError> {
    if path.is_empty() {
        return Ok(Boxes::new());
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| IngestError::Input { path: path.into(), message: e.to_string() })?;
    parse(&text).map_err(|message| IngestError::Input { path: path.into(), message })
}

pub fn parse(text: &str) -> Result<Boxes, String> {
    let mut boxes = Boxes::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split(',').map(str::trim).collect();
        if parts.len() != 5 {
            return Err(format!("line {}: expected file,xmin,ymin,xmax,ymax, got {line:?}", i + 1));
        }
        let numbers: Result<Vec<f32>, _> = parts[1..].iter().map(|p| p.parse::<f32>()).collect();
        let n = match numbers {
            Ok(n) => n,
            Err(_) if i == 0 => continue, // a header
            Err(e) => return Err(format!("line {}: {e} in {line:?}", i + 1)),
        };
        let b = BoundingBox { xmin: n[0], ymin: n[1], xmax: n[2], ymax: n[3] };
        let ok = |v: f32| (0.0..=1.0).contains(&v);
        if !(ok(b.xmin) && ok(b.ymin) && ok(b.xmax) && ok(b.ymax) && b.xmin <= b.xmax && b.ymin <= b.ymax) {
            return Err(format!("line {}: box {line:?} is not within 0..1 with min <= max", i + 1));
        }
        let name = parts[0].rsplit('/').next().unwrap_or(parts[0]).to_string();
        boxes.entry(name).or_default().push(b);
    }
    Ok(boxes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_group_by_base_name_and_bad_lines_are_named() {
        let b = parse("filename,xmin,ymin,xmax,ymax\nn01_1.JPEG,0.1,0.2,0.5,0.6\nsub/n01_1.JPEG,0,0,1,1\nn02.JPEG,0.3,0.3,0.4,0.4\n").unwrap();
        assert_eq!(b["n01_1.JPEG"].len(), 2);
        assert_eq!(b["n01_1.JPEG"][0], BoundingBox { xmin: 0.1, ymin: 0.2, xmax: 0.5, ymax: 0.6 });
        assert_eq!(b["n02.JPEG"].len(), 1);
        assert!(parse("a.jpg,0.1,0.2\n").unwrap_err().contains("line 1"));
        assert!(parse("a.jpg,0,0,1,1\nb.jpg,x,0,1,1\n").unwrap_err().contains("line 2"));
        assert!(parse("a.jpg,0.5,0,0.4,1\n").unwrap_err().contains("min <= max"));
        assert!(load("").unwrap().is_empty());
    }
}

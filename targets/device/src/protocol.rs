//! The request/response protocol: one JSON object per line, each way.
//!
//! Request:
//! `{"id": 1, "task": "mnist-sb", "input": [f32; C*H*W]}` (NCHW, the model's
//! float input, quantized on the device with the task's input quantization),
//! or `"input_i8": [i8; H*W*C]` (NHWC, already quantized). `id` is any JSON
//! value and is echoed back; `task` is a patch's task name or `"base"`.
//!
//! Response: `{"id":1,"task":"mnist-sb","top1":3,"scores":[...],"us":812}`
//! with dequantized scores and `us` the time spent on the request's task
//! switch, input quantization and inference (microseconds, wall clock).
//!
//! A request that cannot be served gets `{"id":...,"error":"..."}` (id `null`
//! when the line is not a JSON object) and the device carries on.

use serde_json::Value;

/// A request's input tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// float, NCHW
    F32(Vec<f32>),
    /// int8, NHWC, already quantized
    I8(Vec<i8>),
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// echoed back verbatim
    pub id: Value,
    /// task name
    pub task: String,
    /// input tensor
    pub input: Input,
}

/// Why a request was refused, with the id to answer to (`Null` if unknown).
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// the request's id, if it could be read
    pub id: Value,
    /// what was wrong
    pub message: String,
}

impl Refusal {
    fn new(id: &Value, message: impl Into<String>) -> Self {
        Refusal { id: id.clone(), message: message.into() }
    }
}

/// Parses one request line. `n_input` is the model's input size (C*H*W);
/// whether the task exists is the server's business.
pub fn parse_request(line: &str, n_input: usize) -> Result<Request, Refusal> {
    let v: Value = serde_json::from_str(line).map_err(|e| Refusal::new(&Value::Null, format!("bad JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(Refusal::new(&Value::Null, "a request is a JSON object: {\"id\":..,\"task\":..,\"input\":[..]}"));
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    let task = match obj.get("task") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(Refusal::new(&id, "\"task\" must be a string")),
        None => return Err(Refusal::new(&id, "missing \"task\"")),
    };
    let input = match (obj.get("input"), obj.get("input_i8")) {
        (Some(x), None) => Input::F32(f32_array(&id, x, n_input)?),
        (None, Some(x)) => Input::I8(i8_array(&id, x, n_input)?),
        _ => {
            return Err(Refusal::new(
                &id,
                "give exactly one of \"input\" (f32, NCHW) or \"input_i8\" (int8, NHWC)",
            ))
        }
    };
    Ok(Request { id, task, input })
}

fn array<'v>(id: &Value, x: &'v Value, name: &str, n: usize) -> Result<&'v [Value], Refusal> {
    let a = x.as_array().ok_or_else(|| Refusal::new(id, format!("\"{name}\" must be an array of numbers")))?;
    if a.len() != n {
        return Err(Refusal::new(id, format!("\"{name}\" has {} values; the model takes {n}", a.len())));
    }
    Ok(a)
}

fn f32_array(id: &Value, x: &Value, n: usize) -> Result<Vec<f32>, Refusal> {
    let a = array(id, x, "input", n)?;
    let mut out = Vec::with_capacity(n);
    for (i, v) in a.iter().enumerate() {
        let f = v.as_f64().ok_or_else(|| Refusal::new(id, format!("input[{i}] is not a number")))?;
        out.push(f as f32);
    }
    Ok(out)
}

fn i8_array(id: &Value, x: &Value, n: usize) -> Result<Vec<i8>, Refusal> {
    let a = array(id, x, "input_i8", n)?;
    let mut out = Vec::with_capacity(n);
    for (i, v) in a.iter().enumerate() {
        let q = v
            .as_i64()
            .and_then(|q| i8::try_from(q).ok())
            .ok_or_else(|| Refusal::new(id, format!("input_i8[{i}] = {v} is not an integer in -128..=127")))?;
        out.push(q);
    }
    Ok(out)
}

/// The response line of a served request.
pub fn response(id: &Value, task: &str, top1: usize, scores: &[f32], us: u128) -> String {
    format!(
        "{{\"id\":{id},\"task\":{},\"top1\":{top1},\"scores\":{},\"us\":{us}}}",
        Value::String(task.to_string()),
        serde_json::to_string(scores).unwrap_or_else(|_| "[]".to_string())
    )
}

/// The response line of a refused request.
pub fn error_response(r: &Refusal) -> String {
    format!("{{\"id\":{},\"error\":{}}}", r.id, Value::String(r.message.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_input_kinds() {
        let r = parse_request(r#"{"id": 7, "task": "t", "input": [0.5, -1, 2]}"#, 3).unwrap();
        assert_eq!(r, Request { id: 7.into(), task: "t".into(), input: Input::F32(vec![0.5, -1.0, 2.0]) });
        let r = parse_request(r#"{"id": "a", "task": "base", "input_i8": [-128, 0, 127]}"#, 3).unwrap();
        assert_eq!(r.input, Input::I8(vec![-128, 0, 127]));
        assert_eq!(r.id, Value::from("a"));
    }

    #[test]
    fn refuses_with_the_id() {
        let bad = [
            (r#"{"id": 1, "task": "t", "input": [1, 2]}"#, Value::from(1)),
            (r#"{"id": 2, "task": "t", "input_i8": [1, 2, 300]}"#, Value::from(2)),
            (r#"{"id": 3, "task": "t", "input_i8": [1, 2, 0.5]}"#, Value::from(3)),
            (r#"{"id": 4, "input": [1, 2, 3]}"#, Value::from(4)),
            (r#"{"id": 5, "task": 9, "input": [1, 2, 3]}"#, Value::from(5)),
            (r#"{"id": 6, "task": "t"}"#, Value::from(6)),
            (r#"{"id": 7, "task": "t", "input": [1, 2, 3], "input_i8": [1, 2, 3]}"#, Value::from(7)),
            (r#"{"id": 8, "task": "t", "input": [1, "x", 3]}"#, Value::from(8)),
            (r#"{"task": "t", "input": [1]}"#, Value::Null),
            (r#"[1, 2, 3]"#, Value::Null),
            (r#"{"id": 9, "task": "t", "input": [1, 2"#, Value::Null),
        ];
        for (line, id) in bad {
            let e = parse_request(line, 3).unwrap_err();
            assert_eq!(e.id, id, "{line}: {}", e.message);
            let out: Value = serde_json::from_str(&error_response(&e)).unwrap();
            assert_eq!(out["id"], id);
            assert!(out["error"].is_string());
        }
    }

    #[test]
    fn responses_are_json() {
        let s = response(&Value::from(3), "mnist-sb", 2, &[0.25, -1.5, 3.0], 120);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["id"], 3);
        assert_eq!(v["task"], "mnist-sb");
        assert_eq!(v["top1"], 2);
        assert_eq!(v["scores"][1], -1.5);
        assert_eq!(v["us"], 120);
    }
}

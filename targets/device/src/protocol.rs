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
//! Several tasks on one input, in one pass (the ops they share run once;
//! `Engine::run_tasks`): `"tasks": ["base", "mnist-sb"]` instead of
//! `"task"`; the response is `{"id":..,"results":[{"task","top1","scores"},
//! ...],"us":..}`, each object what the task alone would give.
//!
//! A request that cannot be served gets `{"id":...,"error":"..."}` (id `null`
//! when the line is not a JSON object) and the device carries on.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
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
    /// task name (the first of `tasks` when a list was given)
    pub task: String,
    /// `"tasks": [..]`: several tasks on one input, in one pass (the ops
    /// they share run once); empty for a `"task"` request
    pub tasks: Vec<String>,
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
        Refusal {
            id: id.clone(),
            message: message.into(),
        }
    }
}

/// Longest `id` accepted, in bytes of JSON (it is echoed back verbatim).
pub const MAX_ID_BYTES: usize = 4096;

/// Parses one request line. `n_input` is the model's input size (C*H*W);
/// whether the task exists is the server's business.
///
/// Memory: the line is read once, without building a JSON tree: the input
/// array goes straight into a `Vec` of at most `n_input` values (further
/// values are counted, not kept), `task` and `id` are kept as raw text first
/// (`id` at most [`MAX_ID_BYTES`]), and anything else is skipped. So a
/// request costs its line plus `4 * n_input` bytes, whatever it holds (a
/// `serde_json::Value` tree costs ~16 bytes per byte of `[0,0,0,..]`).
pub fn parse_request(line: &str, n_input: usize) -> Result<Request, Refusal> {
    let mut de = serde_json::Deserializer::from_str(line);
    let fields = de::Deserializer::deserialize_any(&mut de, RequestVisitor { n: n_input })
        .and_then(|f| de.end().map(|()| f))
        .map_err(|e| Refusal::new(&Value::Null, format!("bad JSON: {e}")))?;
    let Some(f) = fields else {
        return Err(Refusal::new(
            &Value::Null,
            "a request is a JSON object: {\"id\":..,\"task\":..,\"input\":[..]}",
        ));
    };
    let id = match f.id {
        None => Value::Null,
        Some(raw) if raw.get().len() > MAX_ID_BYTES => {
            return Err(Refusal::new(
                &Value::Null,
                format!("\"id\" is longer than {MAX_ID_BYTES} bytes of JSON"),
            ))
        }
        Some(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
    };
    let (task, tasks) = match (f.task, f.tasks) {
        (Some(raw), None) => (
            serde_json::from_str::<String>(raw.get())
                .map_err(|_| Refusal::new(&id, "\"task\" must be a string"))?,
            vec![],
        ),
        (None, Some(raw)) => {
            let list = serde_json::from_str::<Vec<String>>(raw.get())
                .map_err(|_| Refusal::new(&id, "\"tasks\" must be a list of task names"))?;
            if list.is_empty() || list.len() > graftnet_protocol::MAX_INFER_TASKS {
                return Err(Refusal::new(
                    &id,
                    format!(
                        "\"tasks\" must name 1 to {} tasks",
                        graftnet_protocol::MAX_INFER_TASKS
                    ),
                ));
            }
            (list[0].clone(), list)
        }
        (Some(_), Some(_)) => {
            return Err(Refusal::new(&id, "give \"task\" or \"tasks\", not both"))
        }
        (None, None) => return Err(Refusal::new(&id, "missing \"task\"")),
    };
    let input = match (f.input, f.input_i8) {
        (Some(x), None) => Input::F32(x.map_err(|m| Refusal::new(&id, m))?),
        (None, Some(x)) => Input::I8(x.map_err(|m| Refusal::new(&id, m))?),
        _ => {
            return Err(Refusal::new(
                &id,
                "give exactly one of \"input\" (f32, NCHW) or \"input_i8\" (int8, NHWC)",
            ))
        }
    };
    Ok(Request {
        id,
        task,
        tasks,
        input,
    })
}

/// The fields of a request object as read; a field's problem is kept as
/// its message so that the id (which may come later) can go with it.
#[derive(Default)]
struct Fields {
    id: Option<Box<RawValue>>,
    task: Option<Box<RawValue>>,
    tasks: Option<Box<RawValue>>,
    input: Option<Result<Vec<f32>, String>>,
    input_i8: Option<Result<Vec<i8>, String>>,
}

/// The whole line: `Some(fields)` for an object, `None` for any other value.
struct RequestVisitor {
    n: usize,
}

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = Option<Fields>;
    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut f = Fields::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "id" => f.id = Some(map.next_value()?),
                "task" => f.task = Some(map.next_value()?),
                "tasks" => f.tasks = Some(map.next_value()?),
                "input" => {
                    f.input = Some(map.next_value_seed(Numbers::<f32> {
                        n: self.n,
                        name: "input",
                        _t: Default::default(),
                    })?)
                }
                "input_i8" => {
                    f.input_i8 = Some(map.next_value_seed(Numbers::<i8> {
                        n: self.n,
                        name: "input_i8",
                        _t: Default::default(),
                    })?)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(f))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// An element type of an input array.
trait Element: Sized {
    /// The element from a JSON number, or the message for element `i`.
    fn from_number(n: Num, name: &str, i: usize) -> Result<Self, String>;
}

/// A JSON number as read.
#[derive(Clone, Copy)]
enum Num {
    I(i64),
    U(u64),
    F(f64),
}

impl Element for f32 {
    fn from_number(n: Num, _: &str, _: usize) -> Result<Self, String> {
        Ok(match n {
            // As `Value::as_f64` then `as f32` did: the same value for any number.
            Num::I(x) => x as f64 as f32,
            Num::U(x) => x as f64 as f32,
            Num::F(x) => x as f32,
        })
    }
}

impl Element for i8 {
    fn from_number(n: Num, name: &str, i: usize) -> Result<Self, String> {
        let q = match n {
            Num::I(x) => i8::try_from(x).ok(),
            Num::U(x) => i8::try_from(x).ok(),
            Num::F(_) => None,
        };
        let shown = match n {
            Num::I(x) => Value::from(x),
            Num::U(x) => Value::from(x),
            Num::F(x) => Value::from(x),
        };
        q.ok_or_else(|| format!("{name}[{i}] = {shown} is not an integer in -128..=127"))
    }
}

/// An input array of exactly `n` numbers: `Ok(values)` or the message of
/// its first problem (length first, then the first bad element).
struct Numbers<T> {
    n: usize,
    name: &'static str,
    _t: core::marker::PhantomData<T>,
}

impl<'de, T: Element> DeserializeSeed<'de> for Numbers<T> {
    type Value = Result<Vec<T>, String>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<T: Element> Numbers<T> {
    fn not_an_array(&self) -> Result<Vec<T>, String> {
        Err(format!("\"{}\" must be an array of numbers", self.name))
    }
}

impl<'de, T: Element> Visitor<'de> for Numbers<T> {
    type Value = Result<Vec<T>, String>;
    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("an array of numbers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(self.n);
        let mut first_bad = None;
        let mut count = 0usize;
        while let Some(x) = seq.next_element::<NumberOrNot>()? {
            let i = count;
            count += 1;
            if count > self.n || first_bad.is_some() {
                continue;
            }
            match x.0 {
                Some(num) => match T::from_number(num, self.name, i) {
                    Ok(v) => out.push(v),
                    Err(m) => first_bad = Some(m),
                },
                None if self.name == "input" => {
                    first_bad = Some(format!("input[{i}] is not a number"))
                }
                None => {
                    first_bad = Some(format!(
                        "{}[{i}] is not an integer in -128..=127",
                        self.name
                    ))
                }
            }
        }
        if count != self.n {
            return Ok(Err(format!(
                "\"{}\" has {count} values; the model takes {}",
                self.name, self.n
            )));
        }
        Ok(match first_bad {
            Some(m) => Err(m),
            None => Ok(out),
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.not_an_array())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(self.not_an_array())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(self.not_an_array())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(self.not_an_array())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(self.not_an_array())
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(self.not_an_array())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(self.not_an_array())
    }
}

/// One array element: `Some` for a number; anything else is skipped
/// (nested arrays and objects too, without being kept).
struct NumberOrNot(Option<Num>);

impl<'de> de::Deserialize<'de> for NumberOrNot {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrNotVisitor)
    }
}

struct NumberOrNotVisitor;

impl<'de> Visitor<'de> for NumberOrNotVisitor {
    type Value = NumberOrNot;
    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a number")
    }
    fn visit_i64<E>(self, x: i64) -> Result<Self::Value, E> {
        Ok(NumberOrNot(Some(Num::I(x))))
    }
    fn visit_u64<E>(self, x: u64) -> Result<Self::Value, E> {
        Ok(NumberOrNot(Some(Num::U(x))))
    }
    fn visit_f64<E>(self, x: f64) -> Result<Self::Value, E> {
        Ok(NumberOrNot(Some(Num::F(x))))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NumberOrNot(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NumberOrNot(None))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NumberOrNot(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(NumberOrNot(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(NumberOrNot(None))
    }
}

/// The response line of a served request.
pub fn response(id: &Value, task: &str, top1: usize, scores: &[f32], us: u128) -> String {
    format!(
        "{{\"id\":{id},\"task\":{},\"top1\":{top1},\"scores\":{},\"us\":{us}}}",
        Value::String(task.to_string()),
        serde_json::to_string(scores).unwrap_or_else(|_| "[]".to_string())
    )
}

/// The response line of a `"tasks"` request: one object per task, as
/// [`response`] would give it alone (without `id`), under `results`; `us`
/// is the whole pass.
pub fn multi_response(id: &Value, results: &[(String, usize, Vec<f32>)], us: u128) -> String {
    let objs: Vec<String> = results
        .iter()
        .map(|(task, top1, scores)| {
            format!(
                "{{\"task\":{},\"top1\":{top1},\"scores\":{}}}",
                Value::String(task.clone()),
                serde_json::to_string(scores).unwrap_or_else(|_| "[]".to_string())
            )
        })
        .collect();
    format!(
        "{{\"id\":{id},\"results\":[{}],\"us\":{us}}}",
        objs.join(",")
    )
}

/// The response line of a refused request.
pub fn error_response(r: &Refusal) -> String {
    format!(
        "{{\"id\":{},\"error\":{}}}",
        r.id,
        Value::String(r.message.clone())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_input_kinds() {
        let r = parse_request(r#"{"id": 7, "task": "t", "input": [0.5, -1, 2]}"#, 3).unwrap();
        assert_eq!(
            r,
            Request {
                id: 7.into(),
                task: "t".into(),
                tasks: vec![],
                input: Input::F32(vec![0.5, -1.0, 2.0])
            }
        );
        let r = parse_request(
            r#"{"id": "a", "task": "base", "input_i8": [-128, 0, 127]}"#,
            3,
        )
        .unwrap();
        assert_eq!(r.input, Input::I8(vec![-128, 0, 127]));
        assert_eq!(r.id, Value::from("a"));
    }

    #[test]
    fn refuses_with_the_id() {
        let bad = [
            (r#"{"id": 1, "task": "t", "input": [1, 2]}"#, Value::from(1)),
            (
                r#"{"id": 2, "task": "t", "input_i8": [1, 2, 300]}"#,
                Value::from(2),
            ),
            (
                r#"{"id": 3, "task": "t", "input_i8": [1, 2, 0.5]}"#,
                Value::from(3),
            ),
            (r#"{"id": 4, "input": [1, 2, 3]}"#, Value::from(4)),
            (
                r#"{"id": 5, "task": 9, "input": [1, 2, 3]}"#,
                Value::from(5),
            ),
            (r#"{"id": 6, "task": "t"}"#, Value::from(6)),
            (
                r#"{"id": 7, "task": "t", "input": [1, 2, 3], "input_i8": [1, 2, 3]}"#,
                Value::from(7),
            ),
            (
                r#"{"id": 8, "task": "t", "input": [1, "x", 3]}"#,
                Value::from(8),
            ),
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

    /// The parser keeps no JSON tree: the id still comes back when it
    /// follows the input, extra values are counted and not kept, and an id
    /// beyond `MAX_ID_BYTES` is refused.
    #[test]
    fn parsing_is_streamed_and_bounded() {
        let e = parse_request(
            r#"{"input": [1, [2, {"a": 3}], 3], "task": "t", "id": 5}"#,
            3,
        )
        .unwrap_err();
        assert_eq!(
            (e.id, e.message.as_str()),
            (Value::from(5), "input[1] is not a number")
        );
        let many = format!(
            r#"{{"id": 6, "task": "t", "input": [{}0]}}"#,
            "0,".repeat(100_000)
        );
        let e = parse_request(&many, 3).unwrap_err();
        assert_eq!(
            (e.id, e.message.as_str()),
            (
                Value::from(6),
                "\"input\" has 100001 values; the model takes 3"
            )
        );
        let r = parse_request(
            r#"{"id": {"a": [1, "x"]}, "extra": [[]], "task": "t", "input_i8": [1, -2, 3]}"#,
            3,
        )
        .unwrap();
        assert_eq!(r.id, serde_json::json!({"a": [1, "x"]}));
        assert_eq!(r.input, Input::I8(vec![1, -2, 3]));
        let long_id = format!(
            r#"{{"id": "{}", "task": "t", "input": [1, 2, 3]}}"#,
            "x".repeat(MAX_ID_BYTES)
        );
        assert!(parse_request(&long_id, 3)
            .unwrap_err()
            .message
            .contains("longer than 4096"));
        let e = parse_request(r#"{"id": 7, "task": "t", "input": {"a": 1}}"#, 3).unwrap_err();
        assert_eq!(
            (e.id, e.message.as_str()),
            (Value::from(7), "\"input\" must be an array of numbers")
        );
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

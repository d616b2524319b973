//! Parsers for the CLI's compound argument values (`NAME=PATH`, `H,W`,
//! `C,H,W`), shared by every command.

use std::path::PathBuf;

/// `NAME=PATH`.
pub fn parse_kv(s: &str) -> Result<(String, PathBuf), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, got '{s}'"))?;
    Ok((k.to_string(), PathBuf::from(v)))
}

/// `n` comma-separated integers.
pub fn parse_nums(s: &str, n: usize) -> Result<Vec<usize>, String> {
    let v: Result<Vec<usize>, _> = s.split(',').map(|x| x.trim().parse::<usize>()).collect();
    match v {
        Ok(v) if v.len() == n => Ok(v),
        _ => Err(format!("expected {n} comma-separated integers, got '{s}'")),
    }
}

/// `A,B`.
pub fn parse_pair(s: &str) -> Result<(usize, usize), String> {
    let v = parse_nums(s, 2)?;
    Ok((v[0], v[1]))
}

/// `A,B,C`.
pub fn parse_triple(s: &str) -> Result<(usize, usize, usize), String> {
    let v = parse_nums(s, 3)?;
    Ok((v[0], v[1], v[2]))
}

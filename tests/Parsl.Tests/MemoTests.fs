module Parsl.Tests.MemoTests

open System
open System.Collections.Generic
open System.Diagnostics
open Expecto
open Parsl
open Parsl.Data

type SampleRecord = { Name: string; Values: int list }

type SampleUnion =
    | Plain of int
    | Pair of string * float

/// A type with no memo encoding.
type Opaque(x: int) =
    member _.X = x

let private spec n =
    { AppName = "sample"
      Identity = "Parsl.Tests.MemoTests+sample"
      ArgNames = Array.init n (sprintf "a%d")
      Ignored = Array.zeroCreate n }

/// The same argument values, with maps and sets filled in the given or the reverse order.
let samples (reversed: bool) : obj[] =
    let pairs = [ "one", 1; "two", 2; "three", 3 ]
    let pairs = if reversed then List.rev pairs else pairs
    let d = Dictionary<string, int>()
    for k, v in pairs do
        d[k] <- v
    let hs = HashSet<int>()
    for _, v in pairs do
        hs.Add v |> ignore
    [| box "text"
       box 42
       box 3.5
       box [ 1; 2; 3 ]
       box [| 1L; 2L |]
       box (Map.ofList pairs)
       box d
       box hs
       box { Name = "n"; Values = [ 1 ] }
       box (Pair("x", 2.0))
       box (File.Of "zip:/a.zip/b")
       box (1, "two")
       box (set [ 3; 1; 2 ])
       box None
       box (Some 5)
       box DayOfWeek.Friday
       box (Guid "6f9619ff-8b86-d011-b42d-00cf4fc964ff")
       box (DateTime(2026, 11, 25, 1, 2, 3, DateTimeKind.Utc)) |]

/// The key of `samples`, as hex.
let sampleKey (reversed: bool) =
    let args = samples reversed
    match Memo.key [] (spec args.Length) args with
    | Ok k -> string k
    | Error e -> raise e

let private key1 (v: obj) =
    match Memo.key [] (spec 1) [| v |] with
    | Ok k -> k
    | Error e -> raise e

let tests =
    testList "Memo" [
        test "the same arguments give the same key; map and set insertion order does not matter" {
            Expect.equal (sampleKey false) (sampleKey true) "order-independent"
            Expect.equal (sampleKey false).Length 64 "SHA-256 in hex"
        }
        test "a new process computes the same key for the same arguments" {
            let dll = typeof<SampleRecord>.Assembly.Location
            let psi = ProcessStartInfo("dotnet")
            psi.ArgumentList.Add dll
            psi.ArgumentList.Add "--memo-key"
            psi.RedirectStandardOutput <- true
            psi.RedirectStandardError <- true
            use p = Process.Start psi
            let out = p.StandardOutput.ReadToEndAsync()
            let err = p.StandardError.ReadToEndAsync()
            Expect.isTrue (p.WaitForExit 60000) "child finished"
            Expect.equal p.ExitCode 0 (sprintf "child failed: %s" err.Result)
            Expect.equal (out.Result.Trim()) (sampleKey true) "same key in another process"
        }
        test "values of different types or values differ" {
            Expect.notEqual (key1 1) (key1 1L) "int and int64"
            Expect.notEqual (key1 1) (key1 1.0) "int and float"
            Expect.notEqual (key1 "1") (key1 1) "string and int"
            Expect.notEqual (key1 (Plain 1)) (key1 (Pair("1", 1.0))) "union cases"
            Expect.notEqual (key1 [ 1; 2 ]) (key1 [ 2; 1 ]) "sequence order matters"
            Expect.notEqual (key1 null) (key1 "") "null and empty"
        }
        test "the app's identity is part of the key" {
            let a = Memo.key [] (spec 1) [| box 1 |]
            let b = Memo.key [] { spec 1 with Identity = "other" } [| box 1 |]
            let c = Memo.key [] { spec 1 with AppName = "other" } [| box 1 |]
            Expect.notEqual a b "identity"
            Expect.notEqual a c "name"
        }
        test "a type with no encoding is an error naming the argument and the type" {
            match Memo.key [] (spec 2) [| box 1; box (Opaque 3) |] with
            | Error e ->
                Expect.equal e.Argument "argument 2 ('a1')" "the argument"
                Expect.stringContains e.Message "Opaque" "the type"
                Expect.stringContains e.Message "Config.MemoHashers" "the fix"
            | Ok _ -> failtest "expected an error"
            match Memo.key [] (spec 1) [| box [ Opaque 3 ] |] with
            | Error e -> Expect.stringContains e.Message "inside a" "nested"
            | Ok _ -> failtest "expected an error"
        }
        test "a lazy sequence, which may be infinite, has no encoding; a list of it does" {
            match Memo.key [] (spec 1) [| box (Seq.initInfinite id) |] with
            | Error e -> Expect.stringContains e.Message "argument 1" "names the argument"
            | Ok _ -> failtest "expected an error"
            Expect.equal (key1 (box (List.ofSeq (Seq.init 3 id)))) (key1 (box [ 0; 1; 2 ])) "materialized"
        }
        test "a registered hasher encodes the user's type" {
            let hashers = [ typeof<Opaque>, (fun (o: obj) -> BitConverter.GetBytes((o :?> Opaque).X)) ]
            let k (x: int) =
                match Memo.key hashers (spec 1) [| box [ Opaque x ] |] with
                | Ok k -> k
                | Error e -> raise e
            Expect.equal (k 3) (k 3) "same value, same key"
            Expect.notEqual (k 3) (k 4) "different value"
        }
        test "an ignored argument does not change the key" {
            let s = { spec 2 with Ignored = [| false; true |] }
            let k (b: obj) =
                match Memo.key [] s [| box 1; b |] with
                | Ok k -> k
                | Error e -> raise e
            Expect.equal (k (box 1)) (k (box (Opaque 2))) "ignored, even when it has no encoding"
        }
        testProperty "equal structures built separately have equal keys" (fun (xs: int list) (s: string) (m: Map<string, int>) ->
            let a = key1 (box (xs, s, m))
            let b = key1 (box (List.ofArray (Array.ofList xs), (if isNull s then null else String(s.ToCharArray())), Map.ofSeq (Map.toSeq m)))
            a = b)
        testProperty "a map's key does not depend on insertion order, nor on its dictionary type" (fun (m: Map<int, string>) ->
            let d = Dictionary<int, string>()
            for KeyValue(k, v) in Seq.rev (Map.toSeq m |> Seq.map KeyValuePair) do
                d[k] <- v
            key1 (box m) = key1 (box d))
        testProperty "arrays and lists with the same items have the same key" (fun (xs: int list) ->
            key1 (box xs) = key1 (box (Array.ofList xs)))
        testProperty "primitive arrays encode as the same items in a list" (fun (a: int list) (b: int64 list) (c: float list) (d: string list) ->
            key1 (box (Array.ofList a)) = key1 (box (List.map box a))
            && key1 (box (Array.ofList b)) = key1 (box (List.map box b))
            && key1 (box (Array.ofList c)) = key1 (box (List.map box c))
            && key1 (box (Array.ofList d)) = key1 (box (List.map box d)))
        testProperty "different integers have different keys" (fun (a: int) (b: int) ->
            (a = b) = (key1 (box a) = key1 (box b)))
    ]

module Parsl.Tests.CheckpointTests

open System
open System.Security.Cryptography
open System.Text
open Expecto
open Parsl

let private record (seed: string) (app: string) (value: byte[]) =
    { Key = MemoKey(SHA256.HashData(Encoding.UTF8.GetBytes(if isNull seed then "" else seed)))
      AppName = (if isNull app then "" else app)
      TypeName = "System.Int32"
      Value = (if isNull value then [||] else value) }

let private file (records: CheckpointRecord list) =
    Array.concat (Checkpoint.header () :: (records |> List.map Checkpoint.encodeRecord))

let private same (a: CheckpointRecord list) (b: CheckpointRecord list) =
    a.Length = b.Length
    && List.forall2
        (fun (x: CheckpointRecord) (y: CheckpointRecord) ->
            x.Key = y.Key && x.AppName = y.AppName && x.TypeName = y.TypeName && x.Value = y.Value)
        a b

let private gen (items: (string * string * byte[]) list) = items |> List.map (fun (s, a, v) -> record s a v)

let tests =
    testList "Checkpoint format" [
        testProperty "records round-trip" (fun (items: (string * string * byte[]) list) ->
            let rs = gen items
            match Checkpoint.decode (file rs) with
            | Ok c -> same c.Records rs && c.TornBytes = 0
            | Error _ -> false)
        testProperty "a torn last record is skipped and the others are kept" (fun (items: (string * string * byte[]) list) (last: string * string * byte[]) (cut: uint16) ->
            let rs = gen items
            let lastRecord = gen [ last ] |> List.head
            let whole = file (rs @ [ lastRecord ])
            let lastLength = (Checkpoint.encodeRecord lastRecord).Length
            let removed = 1 + int cut % lastLength
            let torn = Array.sub whole 0 (whole.Length - removed)
            match Checkpoint.decode torn with
            | Ok c -> same c.Records rs && c.TornBytes = lastLength - removed
            | Error _ -> false)
        testProperty "a last record with a corrupt byte is skipped" (fun (items: (string * string * byte[]) list) (at: uint16) ->
            let rs = gen items @ [ record "x" "app" [| 1uy; 2uy; 3uy |] ]
            let bytes = file rs
            let lastLength = (Checkpoint.encodeRecord (List.last rs)).Length
            // Flip a byte of the last record's payload or CRC (not its marker or length).
            let i = bytes.Length - lastLength + 6 + int at % (lastLength - 6)
            bytes[i] <- bytes[i] ^^^ 0xFFuy
            match Checkpoint.decode bytes with
            | Ok c -> same c.Records (List.take (rs.Length - 1) rs) && c.TornBytes = lastLength
            | Error _ -> false)
        test "an empty file or a torn header holds no records" {
            Expect.equal (Checkpoint.decode [||]) (Ok { Records = []; TornBytes = 0 }) "empty"
            Expect.equal (Checkpoint.decode (Array.sub (Checkpoint.header ()) 0 5)) (Ok { Records = []; TornBytes = 5 }) "torn header"
        }
        test "another file or another version is an error" {
            match Checkpoint.decode (Encoding.ASCII.GetBytes "this is not a checkpoint") with
            | Error m -> Expect.stringContains m "PARSLCKP" "says why"
            | Ok _ -> failtest "expected an error"
            let h = Checkpoint.header ()
            h[8] <- 9uy
            match Checkpoint.decode h with
            | Error m -> Expect.stringContains m "version 9" "names the version"
            | Ok _ -> failtest "expected an error"
        }
        test "the CRC is the standard CRC-32" {
            Expect.equal (Checkpoint.crc32 (ReadOnlySpan(Encoding.ASCII.GetBytes "123456789"))) 0xCBF43926u "check value"
        }
    ]

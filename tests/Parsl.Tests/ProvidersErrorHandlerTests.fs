module Parsl.Tests.ProvidersErrorHandlerTests

open Expecto
open FsCheck
open Parsl.Providers
open Parsl.Jobs

let states = [| JobState.Pending; JobState.Running; JobState.Completed; JobState.Failed; JobState.Missing; JobState.Cancelled; JobState.Timeout; JobState.Held |]

let statusOf (i: int) code =
    let st = states[abs i % states.Length]
    { JobStatus.ofState st with ExitCode = (if st = JobState.Failed then Some code else None) }

/// Block statuses keyed "0", "1", ... in submission order.
let snapshot (xs: (int * byte) list) = xs |> List.mapi (fun i (s, c) -> string i, statusOf s (int c))

let failed code = { JobStatus.ofState JobState.Failed with ExitCode = Some code; Message = Some "slurm state FAILED"; Stderr = Some "boom" }

let isBad = function SetBadState _ -> true | Healthy -> false

let tests =
    testList "Providers.ErrorHandlers" [
        test "Simple: bad once init_blocks blocks exist and all failed; the message has exit codes and output" {
            let two = [ "0", failed 3; "1", failed 4 ]
            Expect.equal (ErrorHandlers.simple 3 two) Healthy "fewer than init_blocks"
            match ErrorHandlers.simple 2 two with
            | SetBadState m ->
                for part in [ "EXIT CODE: 3"; "EXIT CODE: 4"; "STDERR: boom"; "slurm state FAILED"; "Error 2" ] do
                    Expect.stringContains m part part
            | Healthy -> failtest "expected bad state"
            Expect.equal (ErrorHandlers.simple 1 [ "0", failed 1; "1", JobStatus.ofState JobState.Running ]) Healthy "one alive"
        }
        test "Windowed: the newest blocks decide, ordered numerically (block 10 after block 9)" {
            let s = [ "9", JobStatus.ofState JobState.Completed; "10", failed 1; "11", failed 1; "12", failed 1 ]
            Expect.isTrue (isBad (ErrorHandlers.windowed 3 s)) "last three failed"
            let s2 = [ "9", failed 1; "10", failed 1; "11", failed 1; "12", JobStatus.ofState JobState.Running ]
            Expect.equal (ErrorHandlers.windowed 3 s2) Healthy "newest is running"
        }
        test "Output summaries keep head and tail of long output" {
            let long = String.replicate 3000 "x" + "TAIL"
            match ErrorHandlers.simple 1 [ "0", { failed 1 with Stdout = Some("HEAD" + long) } ] with
            | SetBadState m ->
                Expect.stringContains m "HEAD" "head"
                Expect.stringContains m "TAIL" "tail"
                Expect.stringContains m "\n...\n" "elided middle"
                Expect.isLessThan m.Length 2500 "bounded"
            | Healthy -> failtest "expected bad state"
        }
        test "Validate refuses a window below 1" {
            Expect.equal (ErrorHandlers.validate "HighThroughputExecutor" (BlockErrorHandler.Windowed 0) |> List.map (fun e -> e.Field)) [ "HighThroughputExecutor.BlockErrorHandler" ] "field"
        }
        testProperty "Off never sets bad state" (fun (xs: (int * byte) list) (init: byte) ->
            ErrorHandlers.decide BlockErrorHandler.Off (int init) (snapshot xs) = Healthy)
        testProperty "Simple is bad exactly when enough blocks exist and every one failed or went missing" (fun (xs: (int * byte) list) (init: byte) ->
            let s = snapshot xs
            let expected = s.Length >= max 1 (int init % 5) && s |> List.forall (snd >> ErrorHandlers.isFailure)
            isBad (ErrorHandlers.simple (int init % 5) s) = expected)
        testProperty "Windowed is bad only when the newest threshold blocks all failed" (fun (xs: (int * byte) list) (t: byte) ->
            let threshold = 1 + int t % 4
            let s = snapshot xs
            let newest = s |> List.rev |> List.truncate threshold
            isBad (ErrorHandlers.windowed threshold s) = (newest.Length = threshold && newest |> List.forall (snd >> ErrorHandlers.isFailure)))
        testProperty "A bad-state message names every failed block's exit code" (fun (xs: (int * byte) list) ->
            let s = snapshot xs
            match ErrorHandlers.simple 1 s with
            | SetBadState m -> s |> List.forall (fun (_, st) -> st.ExitCode |> Option.forall (fun c -> m.Contains(sprintf "EXIT CODE: %d" c)))
            | Healthy -> true)
    ]

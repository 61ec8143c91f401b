module Parsl.Tests.AppTests

open Expecto
open Parsl
open Parsl.Tests.TestUtil

let tests =
    testList "Apps" [
        test "a function app returns its result, and futures chain" {
            use dfk = load id
            let square = App.func dfk (fun (x: int) -> x * x)
            let a = square (Arg.value 3)
            let b = square (Arg.future a)
            Expect.equal (await b.Task) 81 "9 squared"
            Expect.equal a.TaskId.Value 0 "ids start at 0"
            Expect.equal b.TaskId.Value 1 "ids increase"
            Expect.equal b.State ExecDone "final state"
        }
    ]

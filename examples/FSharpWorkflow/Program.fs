// A Parsl.NET workflow in F#: `parsl dfk { }` waits on apps without blocking a thread, `and!` runs branches in
// parallel, and the whole workflow is one task of the kernel. Run: dotnet run --project examples/FSharpWorkflow
module FSharpWorkflow.Program

open System.IO
open Parsl

[<EntryPoint>]
let main _ =
    use dfk = DataFlowKernel.Load()
    let numbers = Path.Combine(dfk.RunDir, "numbers.txt")

    // A shell app writes the data; function apps read and compute.
    let writeNumbers = App.shell dfk (fun (n: int) -> sprintf "seq 1 %d > '%s'" n numbers)
    let sumFile = App.func dfk (fun (path: string) -> File.ReadLines path |> Seq.sumBy int64)
    let square = App.func dfk (fun (x: int) -> x * x)

    let workflow =
        parsl dfk {
            let! _ = writeNumbers (Arg.value 1000)
            let! total = sumFile (Arg.value numbers)
            and! squares = Workflow.all [ for i in 1..10 -> square (Arg.value i) ]
            return total, Array.sum squares
        }

    let total, sumOfSquares = workflow.Result
    printfn "sum of 1..1000 (shell app + function app) = %d" total
    printfn "sum of squares of 1..10 (fan-out)         = %d" sumOfSquares
    printfn "workflow: task %d, %s" workflow.TaskId.Value (TaskState.name workflow.State)
    0

module Parsl.Bench.Program

[<EntryPoint>]
let main _ =
    Htex.run (printfn "%s")
    0

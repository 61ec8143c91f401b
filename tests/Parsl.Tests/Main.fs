module Parsl.Tests.Main

open Expecto

let all =
    testList "Parsl" [
        KernelTests.tests
        KernelProperties.tests
        MailboxTests.tests
        ThreadPoolExecutorTests.tests
        ShellTests.tests
        DeepResolverTests.tests
        AppTests.tests
        WorkflowTests.tests
        FilesTests.tests
        MemoTests.tests
        CheckpointTests.tests
        MemoizationTests.tests
        StagingTests.tests
        HtexPolicyTests.tests
        HtexTests.tests
        HtexStagingTests.tests
        ProvidersLauncherTests.tests
        ProvidersSlurmTests.tests
        HtexSlurmTests.tests
        ProvidersSshTests.tests
        ProvidersErrorHandlerTests.tests
        ProvidersGridEngineTests.tests
        ProvidersBatchSamplesTests.tests
        ProvidersKubernetesTests.tests
    ]

[<EntryPoint>]
let main argv =
    match argv with
    // A child process for the memo-key stability test: prints the key of fixed arguments.
    | [| "--memo-key" |] ->
        printfn "%s" (MemoTests.sampleKey false)
        0
    | _ -> runTestsWithCLIArgs [] argv all

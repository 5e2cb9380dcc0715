defmodule HelloEx.MixProject do
  use Mix.Project

  # ferry's Elixir example: OTP only (no hex packages), served with :gen_tcp.
  def project do
    [
      app: :hello_ex,
      version: System.get_env("HELLO_EX_VSN", "0.1.0"),
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [],
      releases: [hello_ex: [include_executables_for: [:unix]]]
    ]
  end

  def application do
    [extra_applications: [:logger], mod: {HelloEx.Application, []}]
  end
end

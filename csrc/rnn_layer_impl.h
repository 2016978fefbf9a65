// The rnn_layer ops of csrc/ops.cpp (one direction: *_layer_forward / _backward / _inference; both directions:
// *_layer_bidir_forward / _backward) for any device `PW` (csrc/rnn_device.h): argument checks, then the one
// recurrence of csrc/rnn_recurrence.h with D = 1 or 2, its results in the ops' shapes. register_rnn_layer_ops<PW>
// registers them for the device's dispatch key (csrc/cpu/rnn_layer.cpp, csrc/cuda/rnn_layer_binding.cpp).
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "rnn_recurrence.h"

namespace s2s_fused {

// f(pw) with the device policy an op runs with: a device that picks its GEMM path per op and shape (the CPU,
// csrc/cpu/cpu_path.h) provides PW::run_layer; any other runs its one policy.
template <class PW, class F>
auto on_device(const char* op, const Layer& L, F&& f) {
  if constexpr (requires { PW::run_layer(op, L, f); }) {
    return PW::run_layer(op, L, std::forward<F>(f));
  } else {
    return f(PW{});
  }
}

template <class PW>
struct RnnLayerOps {
  using Opt = std::optional<at::Tensor>;
  using T = at::Tensor;
  using Guard = typename PW::Guard;  // the device guard every entry point holds (CUDA: the input's device)

  static std::tuple<T, T, T, T, T, T> lstm_forward(const T& input, const T& h0, const T& c0, const T& w_ih,
                                                   const T& w_hh, const Opt& b_ih, const Opt& b_hh,
                                                   const Opt& lengths, bool reverse, const Opt& w_hr) {
    const Guard guard(input.device());
    const Layer L = lstm_one(input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr);
    const Forward f = on_device<PW>("lstm_layer_forward", L, [&](const PW& pw) {
      return forward(pw, L, L.a().h0.unsqueeze(0), c0.unsqueeze(0), /*training=*/true);
    });
    return {f.output, L.per_op(f.final_states(f.hs)), L.per_op(f.final_states(f.cs)), L.per_op(f.hs),
            L.per_op(f.cs), L.per_op(f.gates)};
  }

  static std::tuple<T, T, T> lstm_inference(const T& input, const T& h0, const T& c0, const T& w_ih, const T& w_hh,
                                            const Opt& b_ih, const Opt& b_hh, const Opt& lengths, bool reverse,
                                            const Opt& w_hr) {
    const Guard guard(input.device());
    const Layer L = lstm_one(input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr);
    const Forward f = on_device<PW>("lstm_layer_inference", L, [&](const PW& pw) {
      return forward(pw, L, L.a().h0.unsqueeze(0), c0.unsqueeze(0), /*training=*/false);
    });
    return {f.output, L.per_op(f.final_states(f.hs)), L.per_op(f.final_states(f.cs))};
  }

  // grad_w_hr: (P, H) with a projection, else an empty (0,) tensor.
  static std::tuple<T, T, T, T, T, T, T> lstm_backward(const Opt& grad_output, const Opt& grad_h_n,
                                                       const Opt& grad_c_n, const T& input, const T& w_ih,
                                                       const T& w_hh, const T& hs, const T& cs, const T& workspace,
                                                       const Opt& lengths, bool reverse, const Opt& w_hr) {
    const Guard guard(input.device());
    check_state_history(hs, input, 1);
    const Layer L = one_direction(
        CellKind::LSTM,
        check_layer_args(input, hs.select(0, 0), w_ih, w_hh, std::nullopt, std::nullopt, lengths, 4, "", w_hr),
        reverse);
    const BackwardResult r = on_device<PW>("lstm_layer_backward", L, [&](const PW& pw) {
      return backward(pw, L, hs, cs, workspace, grad_output, grad_h_n, grad_c_n);
    });
    const WeightGrads& w = r.dir[0];
    return {r.grad_input, L.per_op(r.grad_h0), L.per_op(r.grad_c0), w.w_ih, w.w_hh, w.b_ih,
            w.w_hr.defined() ? w.w_hr : at::empty({0}, input.options())};
  }

  static std::tuple<T, T, T, T> gru_forward(const T& input, const T& h0, const T& w_ih, const T& w_hh,
                                            const Opt& b_ih, const Opt& b_hh, const Opt& lengths, bool reverse,
                                            bool reset_after) {
    const Guard guard(input.device());
    const Layer L = gru_one(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after);
    const Forward f = on_device<PW>("gru_layer_forward", L, [&](const PW& pw) {
      return forward(pw, L, L.a().h0.unsqueeze(0), T(), /*training=*/true);
    });
    return {f.output, L.per_op(f.final_states(f.hs)), L.per_op(f.hs), L.per_op(f.ws)};
  }

  static std::tuple<T, T> gru_inference(const T& input, const T& h0, const T& w_ih, const T& w_hh, const Opt& b_ih,
                                        const Opt& b_hh, const Opt& lengths, bool reverse, bool reset_after) {
    const Guard guard(input.device());
    const Layer L = gru_one(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after);
    const Forward f = on_device<PW>("gru_layer_inference", L, [&](const PW& pw) {
      return forward(pw, L, L.a().h0.unsqueeze(0), T(), /*training=*/false);
    });
    return {f.output, L.per_op(f.final_states(f.hs))};
  }

  static std::tuple<T, T, T, T, T, T> gru_backward(const Opt& grad_output, const Opt& grad_h_n, const T& input,
                                                   const T& w_ih, const T& w_hh, const T& hs, const T& workspace,
                                                   const Opt& lengths, bool reverse, bool reset_after) {
    const Guard guard(input.device());
    check_state_history(hs, input, 1);
    const Layer L = one_direction(
        gru_kind(reset_after),
        check_layer_args(input, hs.select(0, 0), w_ih, w_hh, std::nullopt, std::nullopt, lengths, 3), reverse);
    const BackwardResult r = on_device<PW>("gru_layer_backward", L, [&](const PW& pw) {
      return backward(pw, L, hs, T(), workspace, grad_output, grad_h_n, std::nullopt);
    });
    const WeightGrads& w = r.dir[0];
    return {r.grad_input, L.per_op(r.grad_h0), w.w_ih, w.w_hh, w.b_ih, w.b_hh};
  }

  static std::tuple<T, T, T, T, T, T> lstm_bidir_forward(const T& input, const T& h0, const T& c0, const T& w_ih,
                                                         const T& w_hh, const Opt& b_ih, const Opt& b_hh,
                                                         const T& w_ih_r, const T& w_hh_r, const Opt& b_ih_r,
                                                         const Opt& b_hh_r, const Opt& lengths) {
    const Guard guard(input.device());
    const Layer L = both_directions(CellKind::LSTM, input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r,
                                    b_hh_r, lengths);
    check_saved(c0, h0.sizes(), input, "c0", " (as h0)");
    const Forward f = on_device<PW>("lstm_layer_bidir_forward", L, [&](const PW& pw) {
      return forward(pw, L, h0, c0, /*training=*/true);
    });
    return {f.output, f.final_states(f.hs), f.final_states(f.cs), f.hs, f.cs, f.gates};
  }

  static std::tuple<T, T, T, T, T, T, T, T, T> lstm_bidir_backward(
      const Opt& grad_output, const Opt& grad_h_n, const Opt& grad_c_n, const T& input, const T& w_ih, const T& w_hh,
      const T& w_ih_r, const T& w_hh_r, const T& hs, const T& cs, const T& workspace, const Opt& lengths) {
    const Guard guard(input.device());
    check_state_history(hs, input, 2);
    const Layer L = both_directions(CellKind::LSTM, input, hs.select(1, 0), w_ih, w_hh, std::nullopt, std::nullopt,
                                    w_ih_r, w_hh_r, std::nullopt, std::nullopt, lengths);
    const BackwardResult r = on_device<PW>("lstm_layer_bidir_backward", L, [&](const PW& pw) {
      return backward(pw, L, hs, cs, workspace, grad_output, grad_h_n, grad_c_n);
    });
    const WeightGrads &w0 = r.dir[0], &w1 = r.dir[1];
    return {r.grad_input, r.grad_h0, r.grad_c0, w0.w_ih, w0.w_hh, w0.b_ih, w1.w_ih, w1.w_hh, w1.b_ih};
  }

  static std::tuple<T, T, T, T> gru_bidir_forward(const T& input, const T& h0, const T& w_ih, const T& w_hh,
                                                  const Opt& b_ih, const Opt& b_hh, const T& w_ih_r, const T& w_hh_r,
                                                  const Opt& b_ih_r, const Opt& b_hh_r, const Opt& lengths,
                                                  bool reset_after) {
    const Guard guard(input.device());
    const Layer L = both_directions(gru_kind(reset_after), input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r,
                                    b_hh_r, lengths);
    const Forward f = on_device<PW>("gru_layer_bidir_forward", L, [&](const PW& pw) {
      return forward(pw, L, h0, T(), /*training=*/true);
    });
    return {f.output, f.final_states(f.hs), f.hs, f.ws};
  }

  static std::tuple<T, T, T, T, T, T, T, T, T, T> gru_bidir_backward(
      const Opt& grad_output, const Opt& grad_h_n, const T& input, const T& w_ih, const T& w_hh, const T& w_ih_r,
      const T& w_hh_r, const T& hs, const T& workspace, const Opt& lengths, bool reset_after) {
    const Guard guard(input.device());
    check_state_history(hs, input, 2);
    const Layer L = both_directions(gru_kind(reset_after), input, hs.select(1, 0), w_ih, w_hh, std::nullopt,
                                    std::nullopt, w_ih_r, w_hh_r, std::nullopt, std::nullopt, lengths);
    const BackwardResult r = on_device<PW>("gru_layer_bidir_backward", L, [&](const PW& pw) {
      return backward(pw, L, hs, T(), workspace, grad_output, grad_h_n, std::nullopt);
    });
    const WeightGrads &w0 = r.dir[0], &w1 = r.dir[1];
    return {r.grad_input, r.grad_h0, w0.w_ih, w0.w_hh, w0.b_ih, w0.b_hh, w1.w_ih, w1.w_hh, w1.b_ih, w1.b_hh};
  }

 private:
  static Layer lstm_one(const T& input, const T& h0, const T& c0, const T& w_ih, const T& w_hh, const Opt& b_ih,
                        const Opt& b_hh, const Opt& lengths, bool reverse, const Opt& w_hr) {
    const LayerArgs a = check_layer_args(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, 4, "", w_hr);
    if (a.w_hr.defined()) {
      check_saved(c0, {a.B, a.H}, input, "c0", " (h0's rows, w_hr's columns)");
    } else {
      check_saved(c0, h0.sizes(), input, "c0", " (as h0)");
    }
    return one_direction(CellKind::LSTM, a, reverse);
  }
  static Layer gru_one(const T& input, const T& h0, const T& w_ih, const T& w_hh, const Opt& b_ih, const Opt& b_hh,
                       const Opt& lengths, bool reverse, bool reset_after) {
    return one_direction(gru_kind(reset_after), check_layer_args(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, 3),
                         reverse);
  }
};

template <class PW>
void register_rnn_layer_ops(torch::Library& m) {
  using Ops = RnnLayerOps<PW>;
  m.impl("lstm_layer_forward", &Ops::lstm_forward);
  m.impl("lstm_layer_backward", &Ops::lstm_backward);
  m.impl("lstm_layer_inference", &Ops::lstm_inference);
  m.impl("gru_layer_forward", &Ops::gru_forward);
  m.impl("gru_layer_backward", &Ops::gru_backward);
  m.impl("gru_layer_inference", &Ops::gru_inference);
  m.impl("lstm_layer_bidir_forward", &Ops::lstm_bidir_forward);
  m.impl("lstm_layer_bidir_backward", &Ops::lstm_bidir_backward);
  m.impl("gru_layer_bidir_forward", &Ops::gru_bidir_forward);
  m.impl("gru_layer_bidir_backward", &Ops::gru_bidir_backward);
}

}  // namespace s2s_fused

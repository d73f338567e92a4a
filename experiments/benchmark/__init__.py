"""One OOD table: VMDLS against the standard detectors, over seeds and unknown sets.

    python -m experiments.benchmark --profile quick --data_dir ../shared/data \
        --output_dir outputs/ood_quick --unknown mnist noise mnist_noise --seeds 3 --accelerator cpu
    python -m experiments.benchmark --profile paper --data_dir ./data --output_dir outputs/ood_paper \
        --seeds 3 --accelerator gpu                     # every table setting of the original README
    python -m experiments.benchmark --profile paper --dry_run    # the commands, nothing run
    python -m experiments.benchmark --profile standard --data_dir ../shared/data \
        --output_dir outputs/ood_standard --seeds 1 --accelerator cpu  # every model trained (~80 min)
    python -m experiments.benchmark --profile standard --settings near ...      # Fashion-MNIST 0-5 vs 6-9
    python -m experiments.benchmark --profile paper --released ./released --data_dir ./data \
        --accelerator gpu                    # the authors' checkpoints, evaluated (nothing trained)

benchmarks/ood_benchmark.py takes the same flags (it calls the same main). The modules:
original (the README's commands), profiles, plan, data (IDX subsets), calls and runner (the
steps), aggregate (the rows), report (results.md, charts), cli.

For each seed and setting it trains (a) the VMDLS model (main.py's run:
experiments.training.train), (b) the known set's autoencoder (mnist_ae.py's for 28x28 grey
sets, train_resnet_ae.py's for CIFAR: experiments.autoencoders.train_autoencoder) and (c)
the cross-entropy model (main.py --objective ce: same backbone, data, flags and schedule),
then evaluates three times as test.py does (experiments.evaluation.evaluate_checkpoint),
each call fitting once and scoring every unknown set; each step is printed as the command
line of the script whose work it does. The plan names the rows each evaluation gives:

| evaluation (test.py flags)                              | rows (methods)                      |
|---------------------------------------------------------|-------------------------------------|
| VMDLS checkpoint, --detector vmdls vmdls_latent,         | vmdls, vmdls_latent, untrained      |
|   --compare_untrained                                   |                                     |
| VMDLS checkpoint, --detector vmdls, --ae_features        | vmdls_ae                            |
| ce checkpoint, --detector msp energy maxlogit            | msp, energy, maxlogit, mahalanobis, |
|   mahalanobis knn vim                                   | knn, vim                            |

"untrained" is the paper's detector on the network at its initialisation (the seed's).
Unknown sets are registry names (mnist, noise, mnist_noise, omniglot, lsun-crop, ...) or
idx:PATH / folder:PATH; they go to test.py as given, except that with --unknown_images M
(the quick profile) the first M test images of each set are written as an IDX folder
under OUT/data/unknown/ and that folder is scored (8-bit grey, the known set's shape). The
rows are keyed by the set as given (``unknown_set``) and show it by a short name
(``unknown``): registry names as they are, idx:/folder: sets by their folder's name, with as
many parent folders as it takes to tell two sets apart.

Budget flags combine freely: --train_images N / --test_images M write the first N training
and M test images of the known set as an IDX folder under OUT/data/known/ (0: that split
whole; both 0: the known set is read as it is, no folder), and --unknown_images K writes
each unknown set's first K images at the known set's image shape (0: the sets as they
are). IDX subsets are grey: settings with colour images (the CIFAR ones) take 0 for all
three. --max_epochs, --ae_epochs, --limit_train_batches and --lr replace the profile's
values (0: the profile's). A negative value is refused with one line (exit status 2).

Writes OUT/results.json: one row per (setting, method, unknown set) with ``method``,
``unknown``, ``unknown_set``, ``setting``, ``auroc``, ``fpr_at_95_tpr``, ``aupr_in``, ``aupr_out``,
``f1_macro_at_95_tpr``, ``closed_set_accuracy`` (each with ``<metric>_std`` and
``<metric>_per_seed``), ``train_seconds``, ``eval_seconds`` and ``seeds``. Values are means
over the seeds; the ``*_std`` values are SAMPLE standard deviations over the seeds (ddof=1;
0 with one seed).
``train_seconds`` is the training time of the model(s) the method uses (vmdls_ae: VMDLS plus
the autoencoder; untrained: 0); ``eval_seconds`` the wall time of the test.py call that
produced the row. A step resumed after an interruption counts only its last run's time.
Also OUT/results.md: the budget (and the standard profile's deviations from the paper), a
summary table per method (AUROC and FPR at 95% TPR per set and their means, macro-F1 at
95% TPR per set for an open-set setting, closed-set accuracy, training and evaluation
seconds; mean ± sample std over the seeds when there are several), a table per method and
unknown set with every metric (AUROC, FPR95, AUPR-In, AUPR-Out, macro-F1 at 95% TPR,
closed-set accuracy, seconds) and a mean line per method, and the time of each step per
seed and setting; and OUT/auroc.png (AUROC by method and set; with several settings
one bar group per setting, plus OUT/auroc_<setting>.png).

Resumable: every run lives under OUT/seed<k>/<setting>/ (vmdls/, ce/, eval_vmdls/,
eval_vmdls_ae/, eval_ce/; the autoencoder under OUT/seed<k>/ae_<known set>/). A training
with its done.json is not repeated (one interrupted after an epoch resumes from its
last.ckpt through main.py --checkpoint_path; the autoencoder restarts); a test.py call whose
summary.csv holds every requested set is not repeated. OUT/config.json records the budget:
a rerun with another budget into the same OUT stops; another setting of the same profile
and budget joins it (standard: --settings far near after --settings far reruns nothing of
far, and the report holds both).

Profiles
--------
quick (2 CPU cores, about 20 minutes for 3 seeds and four unknown sets): Fashion-MNIST
(all 10 classes) known: the first 1,000 training and the first 500 test images, written as
IDX under OUT/data/known/ and read as idx:PATH; 500 images of each unknown set (default
sets: mnist noise; the registry's mnist reads the MNIST test split alone, which is all it
needs). Backbone mnist-conv, latent 32, and the paper's MNIST command otherwise (Adam,
--kl_coeff 0.1, B_c x B_s = 10 x 16, --margins_epoch 1, --margin_jump 1,
--margin_max_distance 32, --lower_bound 0.05, --step_size 100) EXCEPT --generation_epoch 1
instead of 0 (BENCHMARKS.md, "kl_prior": a KL term started while the prior's class means
are still zeros collapses the latent on this budget) and --lr 1e-3 instead of 1e-4 (in
18 steps, 1e-4 leaves the cross-entropy model at 17 % closed-set accuracy; 1e-3 at 63 %).
Schedule: 3 epochs of 6 batches (18 steps of 160 images, no validation pass); the
autoencoder 2 epochs of 6 batches of 160; test.py with --data_transforms blob (the paper's
test transform). Measured: 677 s (11 min) for 3 seeds and the four sets mnist noise
mnist_noise idx:<digits> on the 2 cores shared with another job (per seed about 2 min of
training and 1.5 min of test.py, the reconstruction-weighted call the dearest: the
autoencoder and a second backbone pass per image). This is far from convergence: the
table compares the methods on equal, small budgets, not the paper's numbers. A fourth unknown set that needs
no download: ``experiments.benchmark.data.write_digits_set(FOLDER)`` (all scikit-learn digits as IDX), scored as
idx:FOLDER.

paper (a GPU machine with the data in place): every table setting of the original README
(benchmarks/readme_original_commands.txt, its training lines verbatim except --gpus,
--data_dir and --unknown_dataset): MNIST with mnist-conv against omniglot, mnist_noise and
noise; CIFAR-10 with vgg, resnet18, densenet and wresnet, and CIFAR-100 with densenet,
against imagenet-crop, imagenet-resize, lsun-crop and lsun-resize. --weights files
(checkpoint_100.pth.tar, finetuning_wideresnet.tar) are looked up in --weights_dir
(default: --data_dir); the cross-entropy baseline keeps --weights and drops --finetune.
Autoencoders: mnist_ae.py (50 epochs) for MNIST, train_resnet_ae.py (100 epochs; resnet18
for CIFAR-10, resnet50 for CIFAR-100), one per known set and seed. test.py with the paper's
test transforms (blob, cifar_test) and batch size 2,500. --settings picks some settings;
--unknown replaces every setting's sets (the trainings keep the README's --unknown_dataset,
used for validation only); --max_epochs / --limit_train_batches / --ae_epochs shorten every
training (for a smoke test). --lr overrides the learning rate of every profile's VMDLS and
ce trainings.

paper --released DIR (evaluation only, over the authors' released files, named as the
original README names them: cnn_mnist.ckpt, cifar10_vgg.ckpt, cifar10_resnet.ckpt,
cifar10_densenet.ckpt, cifar10_wresnet.ckpt, cifar100_densenet.ckpt, ae_mnist.ckpt,
ae_cifar100.ckpt): each README test command's setting (benchmarks/readme_original_commands.txt,
its test lines verbatim except --gpus, --data_dir, --checkpoint_path and --unknown_dataset)
on its checkpoint, against the paper's unknown sets of that known set (or --unknown), with
nothing trained. Per setting and seed: the rows vmdls, vmdls_latent and untrained (the
architecture at its initialisation), and vmdls_ae where the README's line has --ae_features
and DIR holds the known set's autoencoder (ae_mnist.ckpt, ae_cifar100.ckpt; CIFAR-10's was
pl_bolts' pretrained AE, which the README does not release: ae_cifar10.ckpt if there). No
cross-entropy rows (no such model was released); train s is "-". A setting whose checkpoint
is not in DIR is skipped with a note (printed, and in results.md under "Left out"); named in
--settings, it stops the run with one sentence, as does a DIR with none of them. Default
output folder: outputs/ood_paper_released. The training-budget flags (--max_epochs,
--ae_epochs, --limit_train_batches, --lr, --weights_dir) are refused with it.

standard (2 CPU cores, about 80 minutes a seed for the far setting): every model
trained as people train them, on all of Fashion-MNIST. Two settings, picked with
--settings (default: far alone, so that one seed stays within 90 minutes on 2 cores):
- far (setting name fashion_mnist): all 60,000 training and 10,000 test images, all 10
  classes known, the registry's fashion_mnist read as it is (no IDX subset of the known
  set); unknown sets mnist mnist_noise noise digits (digits: the embedded set below), each
  its first 2,000 images (--unknown_images; 0: the sets whole), or the sets of --unknown.
- near (setting name fashion_mnist_near): the open-set split the paper uses for CIFAR:
  Fashion-MNIST classes 0-5 known (fashion_mnist_known, 36,000 training and 6,000 test
  images), classes 6-9 unknown (fashion_mnist_unknown: all 4,000 of its test images, whole
  whatever --unknown_images and --unknown say); the table adds the paper's macro-F1 at
  95% TPR per method.
Each setting and seed: VMDLS with the paper's MNIST command (mnist-conv, latent 32,
enc_out_dim 500, --kl_coeff 0.1, Adam, B_c x B_s = 10 x 16, the margin schedule), its
autoencoder (mnist_ae.py), the cross-entropy model on the same backbone, augmentation,
optimiser, epochs and batches, the untrained reference and every detector. Budget: 3
epochs of 375 balanced batches (one pass over the training set per epoch) for VMDLS and
the cross-entropy model, 3 epochs of 375 batches for the autoencoder, --lr 1e-3. Measured
once (far setting, one seed, 2-core Xeon shared with another job): 80 min
(VMDLS 34, autoencoder 21, cross-entropy 13, evaluation 11), the cross-entropy model at
90.12 % closed-set accuracy. Every difference from the paper's MNIST command is listed
in STANDARD_DEVIATIONS / standard_deviations(), which the dry run and results.md print.

Progress: before each step the harness prints ``[step k/N]`` with the elapsed time and an
estimate of what is left: the recorded seconds of the steps timed so far (this run's and
those done before), per kind of step and setting where one of that kind is timed, else
their mean; no estimate before the first step is timed. results.md ends with each seed's
and setting's time per step.

The unknown-set name ``digits`` (any profile) is the embedded set: all 1,797 scikit-learn
digits of every class at 28x28, written by write_digits_set to OUT/data/sets/digits and
scored as idx: there (the registry's digits is a known set only; digits_unknown is its
held-out classes).

tiny (the tests): the embedded digits, classes 0-5 known (60 training and 30 test images),
30 images of digits_unknown, one epoch of two 6 x 4 batches: seconds, meaningless numbers.
"""
